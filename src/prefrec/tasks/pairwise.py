"""The pairwise task (DMPO): rank two items, the one the user prefers first.

Protocol (`build_pairwise`; Bai et al., DMPO §4.1, §5.1, §5.4). Ratings > 3 are positives, ≤ 3 negatives. Users with
at least 5 positives and 5 negatives are eligible. Eligible users are shuffled by the seed and split disjointly into
100 train / 100 valid / 1000 test users, one sample each. A sample holds out one positive (drawn uniformly among the
user's positives that have at least `min_history + k` earlier interactions) and k negatives (drawn uniformly among
the user's negatives; default k = 1). History = the user's interactions before the positive in time order (equal
timestamps keep file order; --same-time drop leaves them out), minus the held-out negatives and any item sharing a
title with the positive or a negative, the last 40. Comparison i asks to rank the positive and negative i, shown in a
seed-shuffled order; chosen = "positive, negative_i", rejected = ["negative_i, positive"] (title answers), or the
letters of the two options (letter answers).

Scoring: s_first = logp(chosen | x), s_second = logp(rejected | x) for every comparison of every sample, one packed
forward per sample (all comparisons share the history prefix); AUC and pairwise accuracy (prefrec.tasks.metrics).
Prompt facts: per comparison, y = 1[the first-shown item is the positive], x = (Δ mean rating, Δ log(1 + raters),
both unknown-mean flags) of first − second; the intercept is the order bias. The LLM's score is the margin
s_first − s_second, signed toward the first-shown item. Item prior: (Δ smoothed mean, Δ log(1 + n)) of first −
second. Rank/serve: every pair of candidates in both shown orders; a candidate's score is its mean preference
(log-odds) over the others, a Borda count. ID baselines: the positive is candidates[0], the negatives follow.
"""

from __future__ import annotations

import random

import numpy as np

from prefrec import prompts
from prefrec.data.protocols import (SPLITS, Built, ItemFacts, Options, before_counts, check_common, check_options,
                                    filter_row, history_before, liked_flags, negative_flags, order_note,
                                    order_warnings, same_time_note, sequences, split_sizes, assign_users, timed,
                                    user_key)
from prefrec.data.readers import Log
from prefrec.errors import UserError
from prefrec.items import item_ids
from prefrec.samples import Comparison, Sample
from prefrec.scoring.encoding import encode_sample
from prefrec.scoring.packing import score_trees
from prefrec.tasks.base import (Baseline, Facts, Ranking, Task, candidate_ids, comparison_responses,
                                example_prefix)
from prefrec.tasks.formats import AnswerFormat, letter, read_label
from prefrec.tasks.metrics import pairwise_metrics

# ---- wording and answer formats ----


def format_ordering(first: str, second: str) -> str:
    """The pairwise answer text: the two titles, preferred first ("Heat (1995), Casino (1995)")."""
    return f"{first}, {second}"


def _notes(notes: tuple[str, str] | None) -> tuple[str, str]:
    return (f" ({notes[0]})", f" ({notes[1]})") if notes else ("", "")


def title_question(dom: str, a: str, b: str, notes: tuple[str, str] | None = None) -> str:
    """Ask to rank two titles (shown in the given order, which the caller shuffles); `notes` follow the titles in
    parentheses (item facts, an option)."""
    d = prompts.domain(dom)
    na, nb = _notes(notes)
    return (f"Rank these two {d.plural} by how likely the user is to enjoy them, most likely first: "
            f"{prompts.quote(a)}{na} and {prompts.quote(b)}{nb}. Answer with the two titles separated by a comma.")


def letter_question(dom: str, a: str, b: str, notes: tuple[str, str] | None = None) -> str:
    """The two items as options A and B, answered by letter."""
    d = prompts.domain(dom)
    na, nb = _notes(notes)
    return (f"Which of these two {d.plural} is the user more likely to enjoy? A: {prompts.quote(a)}{na}. "
            f"B: {prompts.quote(b)}{nb}. Answer with the letter A or B.")


FORMATS: dict[str, AnswerFormat] = {row.name: row for row in (
    AnswerFormat("title", title_question),
    AnswerFormat("letter", letter_question, letter, read_label(letter, r"\b([A-Za-z])\b")),
)}


def shown_answers(fmt: AnswerFormat, a: str, b: str) -> tuple[str, str]:
    """(the response preferring a, the one preferring b) for items shown in the order a, b: the two orderings in the
    title format, else the labels of the first and the second option."""
    if fmt.label is None:
        return format_ordering(a, b), format_ordering(b, a)
    return fmt.label(0), fmt.label(1)


# ---- the protocol ----

def _pairwise_users(seqs, liked, disliked, before, min_pos: int, need_neg: int, min_before: int):
    """(users with enough positives and negatives, {user: (positions of late enough positives, of negatives)}):
    a positive is late enough when, after removing up to k negatives, min_history earlier items remain."""
    pos_neg_ok, eligible = set(), {}
    for u, seq in seqs.items():
        pos = [j for j, i in enumerate(seq) if liked[i]]
        neg = [j for j, i in enumerate(seq) if disliked[i]]
        if len(pos) >= min_pos and len(neg) >= need_neg:
            pos_neg_ok.add(u)
            late = [j for j in pos if before[u][j] >= min_before]
            if late:
                eligible[u] = (late, neg)
    return pos_neg_ok, eligible


def build_pairwise(log: Log, *, seed: int = 0, negatives: int = 1, threshold: float = 3.0, min_pos: int = 5,
                   min_neg: int = 5, min_history: int = 5, history_len: int = 40, n_train: int | None = 100,
                   n_valid: int | None = 100, n_test: int | None = 1000, per_user: int = 1,
                   history_ratings: bool = False, item_stats: bool = False, negative_below: float | None = None,
                   same_time: str = "keep", answers: str = "title") -> Built:
    fmt = TASK.format(answers)
    for flag, value in (("--negatives", negatives), ("--per-user", per_user)):
        if value < 1:
            raise UserError(f"{flag} must be ≥ 1 for the pairwise task, got {value}")
    check_common(history_len, min_history)
    check_options(log, history_ratings)
    inter = log.interactions
    seqs, liked = sequences(log, seed), liked_flags(log, threshold)
    disliked = negative_flags(log, liked, threshold, negative_below)
    before = before_counts(log, seqs, same_time)
    need_neg = max(min_neg, negatives)
    pos_neg_ok, eligible = _pairwise_users(seqs, liked, disliked, before, min_pos, need_neg,
                                           min_history + negatives)
    kind = "rating > %g" % threshold if log.value == "rating" else "top half of the user's play counts"
    filters = [filter_row(f"≥{min_pos} positives ({kind}) and ≥{need_neg} negatives", log, pos_neg_ok),
               filter_row(f"a positive with ≥{min_history + negatives} earlier interactions", log, set(eligible))]
    requested = {"train": n_train, "valid": n_valid, "test": n_test}
    sizes, warnings = split_sizes(len(eligible), requested, f"eligible users (≥{min_pos} positives, ≥{need_neg} "
                                                           f"negatives, a positive with ≥{min_history + negatives} "
                                                           "earlier interactions)")
    user_split = assign_users(list(eligible), seed, "pairwise", sizes)
    # item facts come from every user outside the test split (each sample leaves its own user out)
    facts = ItemFacts(log, [user_split.get(x.user) != "test" for x in inter]) if item_stats else None
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    rank: dict[str, tuple[int, int]] = {}  # sample id -> (its index among the user's samples, the user's position)
    dropped, tally = 0, {"twins": 0}
    for ui, u in enumerate(sorted(user_split, key=user_key)):
        split = user_split[u]
        late, neg = eligible[u]
        rng = random.Random(f"{seed}:pairwise:{u}")
        for n, p in enumerate(_positions(rng, seed, u, late, per_user if split == "train" else 1)):
            r = rng if n == 0 else random.Random(f"{seed}:pairwise:{u}:{n}")
            sample = _pairwise_sample(log, seqs[u], p, neg, r, negatives=negatives, history_len=history_len,
                                      history_ratings=history_ratings, facts=facts, n_before=before[u][p],
                                      tally=tally, fmt=fmt, sid=f"{log.name}-pairwise-{split}-{u}" + (f"-{n}" if n else ""))
            if sample is None:
                dropped += 1
            else:
                samples[split].append(sample)
                rank[sample.id] = (n, ui)
    # round-robin over users (every user's first sample, then every second one, ...), so that the first N training
    # samples (data.max_train_samples, a learning curve's x) cover as many users as they can
    samples["train"].sort(key=lambda x: rank[x.id])
    warnings += [f"{dropped} sampled positives were dropped: fewer than {negatives} negatives with a title different "
                 "from the held-out positive's"] * bool(dropped) + order_warnings(log)
    filters.append(filter_row("sampled into train/valid/test", log, {s.user for v in samples.values() for s in v}))
    split_of = {s.user: name for name, v in samples.items() for s in v}
    protocol = _pairwise_protocol(log, negatives, kind, threshold, negative_below, min_pos, min_neg, min_history,
                                  history_len, per_user, history_ratings, item_stats, answers)
    protocol.update(same_time_history=same_time_note(log, same_time, samples),
                    history_title_twins_removed=tally["twins"])
    return Built(samples=samples, interaction_split=[split_of.get(x.user, "unused") for x in inter],
                 users_eligible=len(eligible), filters=filters, warnings=warnings, requested=requested,
                 protocol=protocol)


def _positions(rng: random.Random, seed: int, u: str, late: list[int], per_user: int) -> list[int]:
    """A user's sampled positives: the first is the papers' one (drawn from the user's own stream); --per-user adds
    more training samples along the timeline from another stream, so per_user = 1 reproduces the protocol exactly."""
    positions = [rng.choice(late)]
    if per_user > 1:
        rest = [j for j in late if j != positions[0]]
        positions += random.Random(f"{seed}:pairwise:{u}:more").sample(rest, min(per_user - 1, len(rest)))
    return positions


def _pairwise_protocol(log, negatives, kind, threshold, negative_below, min_pos, min_neg, min_history, history_len,
                       per_user, history_ratings, item_stats, answers) -> dict:
    """stats.json's description of a pairwise protocol, as run."""
    negative = "the rest" if log.value != "rating" else f"rating ≤ {threshold:g}" if negative_below is None else \
        f"rating < {negative_below:g} (ratings in between are neither; they stay in the history)"
    return {"name": "DMPO pairwise", "negatives": negatives, "positive": kind, "negative": negative,
            "min_positives": min_pos, "min_negatives": min_neg, "min_history": min_history,
            "history_len": history_len, "user_disjoint": True, "per_user": per_user,
            "history_ratings": history_ratings,
            "item_stats": "users outside the test split, the sample's own user left out" if item_stats else False,
            "answers": answers, "history_order": order_note(log)}


def _pairwise_sample(log: Log, seq: list[int], p: int, neg: list[int], rng: random.Random, *, negatives: int,
                     history_len: int, history_ratings: bool, facts: "ItemFacts | None", sid: str,
                     n_before: int | None = None, tally: dict | None = None, fmt: AnswerFormat = None) -> Sample | None:
    """One pairwise sample of a user: the positive at sequence position p, k negatives drawn from `neg`, the
    history = the first n_before positions (default p: everything before p) minus the held-out negatives and any
    item sharing a title with the positive or a negative; None when too few negatives have another title."""
    inter, title = log.interactions, log.title
    u = inter[seq[p]].user
    pos_item = inter[seq[p]].item
    pos_title = title(pos_item)
    # a negative sharing the positive's title would make the two orderings identical texts
    usable = [j for j in neg if title(inter[seq[j]].item).casefold() != pos_title.casefold()]
    if len(usable) < negatives:
        return None
    chosen_negs = rng.sample(usable, negatives)
    neg_items = [inter[seq[j]].item for j in chosen_negs]
    shown = {pos_title.casefold(), *(title(i).casefold() for i in neg_items)}
    hist, n_twins = history_before(log, seq, p if n_before is None else n_before, history_len, shown,
                                   set(chosen_negs))
    if tally is not None:
        tally["twins"] += n_twins > 0
    hist_items = [inter[i].item for i in hist]
    hist_titles = [title(i) for i in hist_items]
    note = (lambda it: facts.note(it, u)) if facts is not None else None
    comps = []
    for n_item in neg_items:
        n_title = title(n_item)
        first_pos = rng.random() < 0.5
        a, b = (pos_title, n_title) if first_pos else (n_title, pos_title)
        notes = None
        if note is not None:
            notes = (note(pos_item), note(n_item)) if first_pos else (note(n_item), note(pos_item))
        first_preferred, second_preferred = shown_answers(fmt, a, b)
        chosen, rejected = (first_preferred, second_preferred) if first_pos else (second_preferred, first_preferred)
        comps.append(Comparison(question=fmt.question(log.domain, a, b, notes), chosen=chosen, rejected=[rejected]))
    ratings = [inter[i].rating for i in hist] if history_ratings else None
    return Sample(id=sid, task="pairwise", domain=log.domain,
                  prefix=prompts.history_prefix(log.domain, hist_titles, ratings, timed=timed(log)),
                  comparisons=comps, user=u,
                  history=hist_titles, history_items=hist_items, candidates=[pos_title] + [title(i) for i in neg_items],
                  candidate_items=[pos_item] + neg_items, target=pos_title, target_item=pos_item,
                  candidate_ratings=[inter[seq[j]].rating for j in [p] + chosen_negs] if log.value == "rating" else [],
                  answer_format=fmt.name)


def _build(log: Log, o: Options) -> Built:
    """The protocol with `prefrec data prepare`'s options (Options; the defaults of the task row)."""
    if o.train_order is not None:
        raise UserError("--train-order applies to the candidates task (the pairwise task's training samples are "
                        "already round-robin over users)")
    return build_pairwise(log, seed=o.seed, negatives=o.negatives, threshold=o.liked_above, min_pos=o.min_pos,
                          min_neg=o.min_neg, min_history=o.min_history, history_len=o.history_len,
                          per_user=o.per_user, negative_below=o.negative_below, same_time=o.same_time,
                          answers=o.answers, history_ratings=o.history_ratings, item_stats=o.item_stats, **o.sizes())


def _ratings(s: Sample, k: int) -> list:
    """Rejected response i is comparison i's ordering with the negative candidates[1 + i]."""
    return [s.candidate_ratings[0]] + s.candidate_ratings[1:1 + k]


# ---- scoring and metrics ----

def score_pairwise(model, tokenizer, samples: list[Sample], *, max_tokens_per_batch: int = 4096,
                   progress: bool = True) -> list[dict]:
    """Per sample: s_first[j] = logp(chosen ordering of comparison j), s_second[j] = logp(its first rejected one).
    One packed forward per sample (all comparisons share the history prefix)."""
    ids = item_ids(model)  # a model trained with item tokens is scored with them
    trees = [encode_sample(tokenizer, s, which="all", items=ids) for s in samples]
    nested = score_trees(model, trees, max_tokens_per_batch=max_tokens_per_batch, progress=progress,
                         desc="pairwise").nested()
    return _rows(samples, [[float(b[0]) for b in branches] for branches in nested],
                 [[float(b[1]) for b in branches] for branches in nested])


def _rows(samples: list[Sample], firsts: list[list[float]], seconds: list[list[float]]) -> list[dict]:
    """Per sample, s_first[j] / s_second[j]: the summed log-probs of comparison j's chosen and rejected ordering."""
    return [{"id": s.id, "user": s.user, "s_first": a, "s_second": b} for s, a, b in zip(samples, firsts, seconds)]


def _rows_from_pairs(samples: list[Sample], chosen, rejected) -> list[dict]:
    """score_pairwise's rows from a pass over the same trees (chosen, rejected: (n, comparisons), one rejected
    ordering per comparison)."""
    return _rows(samples, chosen.tolist(), rejected.tolist())


def _row_metrics(rows: list[dict]) -> dict:
    first, second = np.concatenate([r["s_first"] for r in rows]), np.concatenate([r["s_second"] for r in rows])
    return {**pairwise_metrics(first, second), "ties": int(np.sum(first == second))}


def _example(domain: str, answers: str) -> tuple[str, str, str]:
    a, b = "Alien (1979)", "Jaws (1975)"
    fmt = TASK.format(answers)
    return example_prefix(domain), fmt.question(domain, a, b), shown_answers(fmt, a, b)[0]


# ---- prompt facts and the item prior ----

def _facts_features(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Per comparison j: x (first − second facts), y = 1[the positive is shown first]."""
    xs, ys = [], []
    for c, neg in zip(s.comparisons, s.candidates[1:]):
        (ap, fp), (an, fn) = prompts.shown(c.question, s.target), prompts.shown(c.question, neg)
        first, second = (fp, fn) if ap < an else (fn, fp)
        xs.append([first[0] - second[0], first[1] - second[1], first[2], second[2]])
        ys.append(float(ap < an))
    return np.array(xs), np.array(ys)


def _llm(s: Sample, row: dict) -> np.ndarray:
    """The LLM's preference for the first-shown item, per comparison."""
    margin = np.asarray(row["s_first"], float) - np.asarray(row["s_second"], float)
    return np.where(_facts_features(s)[1] == 1.0, margin, -margin)


def _facts_rows(s: Sample, z: np.ndarray) -> dict:
    """logit P(first-shown is the positive) -> s_first − s_second = logit P(positive preferred), the sign flipped
    exactly (so that the two orders of equal facts tie exactly)."""
    z_pos = np.where(_facts_features(s)[1] == 1.0, z, -z)
    return {"s_first": z_pos.tolist(), "s_second": [0.0] * len(z)}


def _facts_metrics(rows: list[dict]) -> dict:
    return pairwise_metrics(np.concatenate([r["s_first"] for r in rows]), np.concatenate([r["s_second"] for r in rows]))


def _prior(prior, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(Δ smoothed mean, Δ log(1 + n)) of first-shown − second-shown (swapping the two items flips the answer),
    y = 1[the positive is shown first]."""
    ids = candidate_ids(s)
    first_is_pos = _facts_features(s)[1]  # the shown order, read off the prompt
    pos = np.array(prior.features(ids[0], s.user))
    negs = np.array([prior.features(i, s.user) for i in ids[1:]])
    return np.where(first_is_pos == 1.0, 1.0, -1.0)[:, None] * (pos - negs), first_is_pos


# ---- rank/serve: every pair in both shown orders ----

def shown_pairs(candidates: list[str]) -> list[tuple[str, str]]:
    """Every pair of candidates in both shown orders: (a, b) then (b, a)."""
    return [pair for i, a in enumerate(candidates) for b in candidates[i + 1:] for pair in ((a, b), (b, a))]


def _rank_questions(domain: str, candidates: list[str], fmt: AnswerFormat) -> tuple[list[str], list[list[str]]]:
    pairs = shown_pairs(candidates)
    return [fmt.question(domain, a, b) for a, b in pairs], [list(shown_answers(fmt, a, b)) for a, b in pairs]


def _rank_rows(tree, candidates: list[str], summed: list[float]) -> list[dict]:
    """Each candidate's mean preference (log-odds) over the others and its wins, from the two responses of every
    shown pair (tree order of shown_pairs)."""
    pref = {c: [] for c in candidates}
    for n, (a, b) in enumerate(shown_pairs(candidates)):
        m = summed[2 * n] - summed[2 * n + 1]  # first shown preferred over second
        pref[a].append(m)
        pref[b].append(-m)
    return [{"title": c, "score": sum(pref[c]) / len(pref[c]), "wins": sum(x > 0 for x in pref[c]) / 2,
             "comparisons": len(pref[c])} for c in candidates]


def _baseline_rows(keys: list[dict], scores: np.ndarray, target_index) -> list[dict]:
    """Per comparison, s_first = score(positive), s_second = score(negative_j)."""
    s_first = np.repeat(scores[:, :1], scores.shape[1] - 1, axis=1)
    return [{**key, "s_first": a.tolist(), "s_second": b.tolist()} for key, a, b in zip(keys, s_first, scores[:, 1:])]


TASK = Task(
    name="pairwise", formats=FORMATS, build=_build, score=score_pairwise, metrics=_row_metrics,
    defaults={"negatives": 1, "history_len": 40, "min_history": 5, "n_train": 100, "n_valid": 100, "n_test": 1000},
    key_metrics=lambda: ["auc", "pairwise_accuracy"], example=_example, responses=comparison_responses,
    ratings=_ratings,
    facts=Facts(_facts_features, _llm, _facts_rows, "auc", _facts_metrics, _prior),
    rank=Ranking(_rank_questions, _rank_rows, min_candidates=2),
    baseline=Baseline(_baseline_rows, positive_first=True, preference_pairs=True), prior_slice=True,
    rows_from_pairs=_rows_from_pairs,
)
