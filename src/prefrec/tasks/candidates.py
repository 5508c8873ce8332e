"""The candidates task (S-DPO, on LLaRA's setting): which one of these 20 items will the user pick next?

Protocol (`build_candidates`; Chen et al. 2024, Liao et al. 2024). Next-item prediction over each user's
time-ordered sequence: the sample at position t has the item at t as target and the ≤ 10 items before it as
history; samples with < 3 history items are dropped. 20 candidates = the target + 19 items drawn uniformly from the
items the user never interacted with (anywhere in the log), in a seed-shuffled order; rejected = k of the 19
(default 3). Split 8:1:1 chronologically: all samples are ordered by their target's timestamp (ties: user, then
position) and cut at 80 % and 90 %. Without timestamps (LastFM, Goodreads CSV) each user's own sequence, in its
seeded random order (data.protocols.sequences), is cut instead: the last 10 % of a user's targets are test, the
10 % before valid; the prompts then claim no time order. Samples are not user-disjoint (as in LLaRA / S-DPO). Each
split is then capped to --train/--valid/--test samples, drawn uniformly by the seed and kept in time order; with
--train-order round-robin (not the papers') the training samples are reordered so that the first N are as many
users' as they can be (`_round_robin`).

Answers: the target's title (title), or its number in a numbered list (number).
Scoring: likelihood ranking, every candidate's answer as a response to the prompt, one packed forward per sample,
ranked by summed logp (rank_*) and by mean logp per token (rank_norm_*); greedy generation of the answer, matched
back to one candidate (HR@1 and ValidRatio, the papers' numbers).
Prompt facts: per candidate (pointwise), y = 1[target], x = (mean rating, log(1 + raters), no-mean flag, shown
position / number of candidates); the LLM's score is each candidate's summed log-prob minus the sample's mean. Item
prior: (smoothed mean, log(1 + n)) per candidate. Rank/serve: the candidates prompt, every candidate's answer
scored. ID baselines: scores of the candidates in prompt order -> ranking metrics.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import numpy as np

from prefrec import prompts
from prefrec.data.protocols import (SPLITS, Built, ItemFacts, Options, before_counts, check_common, check_options,
                                    filter_row, history_before, order_note, order_warnings, same_time_note,
                                    sequences, timed, user_key)
from prefrec.data.readers import Log
from prefrec.errors import UserError
from prefrec.items import item_ids
from prefrec.samples import Comparison, Sample
from prefrec.scoring.encoding import encode_texts, end_of_turn_id, response_ids
from prefrec.scoring.generation import generate_answers
from prefrec.scoring.matching import match
from prefrec.scoring.packing import score_trees
from prefrec.scoring.soft import mark_sample
from prefrec.scoring.trees import Tree
from prefrec.scoring.trie import AnswerTrie
from prefrec.tasks import metrics
from prefrec.tasks.base import Baseline, Facts, Ranking, Task, candidate_ids, comparison_responses, example_prefix, rated
from prefrec.tasks.formats import AnswerFormat, number, read_label

# ---- wording and answer formats ----


def _ask(d: prompts.Domain, timed: bool) -> str:
    """timed: False for a log without time (a held-out item, not the next one): the question must not say "next"."""
    return f"will the user {d.consume} next" if timed else f"has the user also {d.consumed}"


def title_question(dom: str, candidates: list[str], notes: list[str] | None = None, *, timed: bool = True) -> str:
    d = prompts.domain(dom)
    return (f"Which one of these {len(candidates)} {d.plural} {_ask(d, timed)}? "
            f"Candidates: {prompts.title_list(candidates, notes)}. Answer with the title only.")


def number_question(dom: str, candidates: list[str], notes: list[str] | None = None, *, timed: bool = True) -> str:
    """The candidates as a numbered list, answered by number."""
    d = prompts.domain(dom)
    notes = notes or [""] * len(candidates)
    lines = "".join(f"\n{i + 1}. {prompts.quote(c)}" + (f" ({n})" if n else "")
                    for i, (c, n) in enumerate(zip(candidates, notes, strict=True)))
    return f"Which one of these {len(candidates)} {d.plural} {_ask(d, timed)}?{lines}\nAnswer with the number only."


FORMATS: dict[str, AnswerFormat] = {row.name: row for row in (
    AnswerFormat("title", title_question),
    AnswerFormat("number", number_question, number, read_label(number, r"(?<![\d.])(\d{1,3})(?![\d])")),
)}


# ---- the protocol ----

def _title_twins(pool: list[str], title: Callable[[str], str]) -> dict[str, tuple[str, ...]]:
    """item -> every item sharing its title (case-insensitive), for the few titles that several ids share."""
    groups: dict[str, list[str]] = {}
    for it in pool:
        groups.setdefault(title(it).casefold(), []).append(it)
    return {it: tuple(g) for g in groups.values() if len(g) > 1 for it in g}


def _allowed(it: str, banned: set[str], twins: dict[str, tuple[str, ...]], chosen: set[str]) -> bool:
    """Not interacted with, not chosen yet, and not sharing a title with either (a candidate list must not show
    the same text twice, nor a title the user already has under another id)."""
    if it in banned or it in chosen:
        return False
    tw = twins.get(it)
    return not tw or not any(o in banned or o in chosen for o in tw)


def _sample_negatives(rng: random.Random, pool: list[str], n: int, banned: set[str],
                      twins: dict[str, tuple[str, ...]]) -> list[str] | None:
    """n items drawn uniformly from the allowed part of `pool` (rejection sampling), or None if there are fewer."""
    chosen: list[str] = []
    taken: set[str] = set()
    attempts = 0
    while len(chosen) < n and attempts < 20 * n + 200:
        attempts += 1
        it = pool[rng.randrange(len(pool))]
        if _allowed(it, banned, twins, taken):
            chosen.append(it)
            taken.add(it)
    if len(chosen) < n:  # a small or nearly exhausted catalogue: walk the rest in a shuffled order
        rest = [it for it in pool if it not in banned and it not in taken]
        rng.shuffle(rest)
        for it in rest:
            if len(chosen) == n:
                break
            if _allowed(it, banned, twins, taken):
                chosen.append(it)
                taken.add(it)
    return chosen if len(chosen) == n else None


def _candidate_splits(log: Log, seqs: dict, before: dict, urank: dict, min_history: int,
                      ratios: tuple[float, float, float]) -> tuple[dict, list[str], str]:
    """({split: [(user, target position)]}, the split of every interaction, a note on how it was cut): one global
    chronological cut by target timestamp when the log has them, else a per-user cut of each sequence."""
    inter = log.interactions
    by_split: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    interaction_split = ["unused"] * len(inter)
    tot = sum(ratios)
    if log.has_timestamps:
        # one sort of plain tuples (timestamp, user rank, position, user): ties broken by user, then position
        keyed = sorted((inter[i].timestamp, urank[u], t, u) for u, seq in seqs.items() for t, i in enumerate(seq))
        targets = [k for k in keyed if before[k[3]][k[2]] >= min_history]
        n = len(targets)
        c1, c2 = round(n * ratios[0] / tot), round(n * (ratios[0] + ratios[1]) / tot)
        by_split = {"train": [(k[3], k[2]) for k in targets[:c1]], "valid": [(k[3], k[2]) for k in targets[c1:c2]],
                    "test": [(k[3], k[2]) for k in targets[c2:]]}
        k1 = targets[c1] if c1 < n else None
        k2 = targets[c2] if c2 < n else None
        for k in keyed:  # every interaction, history-only ones included, falls on one side of the two cuts
            interaction_split[seqs[k[3]][k[2]]] = ("train" if k1 is None or k < k1 else
                                                   "valid" if k2 is None or k < k2 else "test")
        mode = f"global chronological {ratios[0]:g}:{ratios[1]:g}:{ratios[2]:g} cut over all samples by target timestamp"
    else:
        for u in sorted(seqs, key=user_key):
            seq = seqs[u]
            m = max(0, len(seq) - min_history)
            n_te = math.floor(m * ratios[2] / tot + 0.5)
            n_va = math.floor(m * ratios[1] / tot + 0.5)
            n_tr = m - n_te - n_va
            for t in range(len(seq)):
                r = t - min_history
                split = "train" if r < n_tr else "valid" if r < n_tr + n_va else "test"
                interaction_split[seq[t]] = split
                if r >= 0:
                    by_split[split].append((u, t))
        mode = (f"per-user {ratios[0]:g}:{ratios[1]:g}:{ratios[2]:g} cut of each sequence, in "
                + ("file order (--order-by file)" if timed(log) else "a seeded random order (no timestamps: a "
                   "held-out item, not the next one)"))
    return by_split, interaction_split, mode


def _cap_splits(by_split: dict, requested: dict, seed: int) -> None:
    """Keep a seeded random subset of each split's potential samples (in order) where it exceeds the request."""
    for s in SPLITS:
        cap = requested[s]
        if cap is not None and len(by_split[s]) > cap:
            keep = sorted(random.Random(f"{seed}:candidates:cap:{s}").sample(range(len(by_split[s])), cap))
            by_split[s] = [by_split[s][j] for j in keep]
        if requested[s] != 0 and not by_split[s]:
            raise UserError(f"the {s} split has no next-item sample; the log is too small for an 8:1:1 split")


def build_candidates(log: Log, *, seed: int = 0, negatives: int = 3, n_candidates: int = 20, history_len: int = 10,
                     min_history: int = 3, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                     n_train: int | None = 1000, n_valid: int | None = 200, n_test: int | None = 1000,
                     history_ratings: bool = False, item_stats: bool = False, same_time: str = "keep",
                     answers: str = "title", train_order: str = "time") -> Built:
    fmt = TASK.format(answers)
    _check_candidates(n_candidates, negatives, train_order)
    check_common(history_len, min_history)
    check_options(log, history_ratings)
    min_history = max(min_history, 1)
    seqs = sequences(log, seed)
    before = before_counts(log, seqs, same_time)
    urank = {u: r for r, u in enumerate(sorted(seqs, key=user_key))}
    eligible_users = {u for u, seq in seqs.items() if len(seq) > min_history and before[u][-1] >= min_history}
    if not eligible_users:
        raise UserError(f"no user has more than {min_history} interactions, so there is no next-item sample")
    filters = [filter_row(f">{min_history} interactions (a target with ≥{min_history} history items)", log, eligible_users)]
    # every (user, position t ≥ min_history) is a potential sample; Sample objects are built only for the kept ones
    by_split, interaction_split, mode = _candidate_splits(log, seqs, before, urank, min_history, ratios)
    potential = {s: len(by_split[s]) for s in SPLITS}
    requested = {"train": n_train, "valid": n_valid, "test": n_test}
    _cap_splits(by_split, requested, seed)
    # item facts from the training period only (each sample leaves its own user out)
    facts = ItemFacts(log, [sp == "train" for sp in interaction_split]) if item_stats else None
    make = _CandidateMaker(log, seqs, before, seed, negatives, n_candidates, history_len, history_ratings, facts,
                           fmt)
    samples = {s: [x for x in (make(s, u, t) for u, t in by_split[s]) if x is not None] for s in SPLITS}
    if train_order == "round-robin":
        samples["train"] = _round_robin(samples["train"], seed)
    warnings: list[str] = []
    if make.skipped:
        warnings.append(f"{make.skipped} samples were skipped: fewer than {n_candidates - 1} items with distinct "
                        "titles that the user never interacted with")
    warnings += order_warnings(log)
    filters.append(filter_row("users with a sample kept in train/valid/test", log,
                               {s.user for v in samples.values() for s in v}))
    return Built(samples=samples, interaction_split=interaction_split, users_eligible=len(eligible_users),
                 filters=filters, warnings=warnings, requested=requested,
                 protocol={"name": "S-DPO candidates (LLaRA setting)", "negatives": negatives,
                           "n_candidates": n_candidates, "history_len": history_len, "min_history": min_history,
                           "split": mode, "user_disjoint": False,
                           "negative_pool": "items in the log the user never interacted with, distinct titles",
                           "potential_samples": potential, "history_ratings": history_ratings,
                           "item_stats": "train-period interactions, the sample's own user left out"
                           if item_stats else False, "answers": answers,
                           "history_order": order_note(log),
                           "same_time_history": same_time_note(log, same_time, samples),
                           "history_title_twins_removed": make.twins_removed, "train_order": train_order})


TRAIN_ORDERS = ("time", "round-robin")


def _check_candidates(n_candidates: int, negatives: int, train_order: str) -> None:
    if train_order not in TRAIN_ORDERS:
        raise UserError(f"--train-order {train_order!r}: expected one of {', '.join(TRAIN_ORDERS)}")
    if n_candidates < 2:
        raise UserError(f"--candidates must be ≥ 2, got {n_candidates}")
    if not 1 <= negatives <= n_candidates - 1:
        raise UserError(f"--negatives must be between 1 and {n_candidates - 1} (the non-target candidates), got {negatives}")


def _round_robin(train: list[Sample], seed: int) -> list[Sample]:
    """Every user's first sample, then every user's second, ...; users in a seeded order, each user's samples in a
    seeded random order. Time order (the papers') puts the log's earliest raters first, so the first N training
    samples (data.max_train_samples, a learning curve's x) were a handful of users' (ML-1M: 6 users for 1,000); in
    this order they are min(N, users) users'. Random within a user, not time: a user's earliest sample has the
    shortest history."""
    by_user: dict[str, list[Sample]] = {}
    for s in train:
        by_user.setdefault(s.user, []).append(s)
    users = sorted(by_user, key=user_key)
    random.Random(f"{seed}:candidates:train-order").shuffle(users)
    for u in users:
        random.Random(f"{seed}:candidates:train-order:{u}").shuffle(by_user[u])
    rounds = max((len(v) for v in by_user.values()), default=0)
    return [by_user[u][r] for r in range(rounds) for u in users if r < len(by_user[u])]


class _CandidateMaker:
    """One candidates sample per kept (user, position): 19 sampled never-seen items + the target, shuffled, the
    history before the target, and the answers in the chosen format. Counts what it had to skip."""

    def __init__(self, log, seqs, before, seed, negatives, n_candidates, history_len, history_ratings, facts,
                 fmt: AnswerFormat):
        self.log, self.seqs, self.before, self.seed = log, seqs, before, seed
        self.negatives, self.n_candidates, self.history_len = negatives, n_candidates, history_len
        self.history_ratings, self.facts, self.answers = history_ratings, facts, fmt
        self.pool = sorted({x.item for x in log.interactions}, key=user_key)
        self.twins = _title_twins(self.pool, log.title)
        self.user_items: dict[str, set[str]] = {}
        self.skipped = self.twins_removed = 0
        self.timed = timed(log)

    def __call__(self, split: str, u: str, t: int) -> Sample | None:
        log, seq, inter, title = self.log, self.seqs[u], self.log.interactions, self.log.title
        rng = random.Random(f"{self.seed}:candidates:{u}:{t}")
        target = inter[seq[t]].item
        if u not in self.user_items:
            self.user_items[u] = {inter[i].item for i in seq}
        negs = _sample_negatives(rng, self.pool, self.n_candidates - 1, self.user_items[u], self.twins)
        if negs is None:
            self.skipped += 1
            return None
        cands = negs + [target]
        rng.shuffle(cands)
        rejected = rng.sample(negs, self.negatives)
        hist, n_twins = history_before(log, seq, self.before[u][t], self.history_len, {title(target).casefold()})
        self.twins_removed += n_twins > 0
        hist_items = [inter[i].item for i in hist]
        hist_titles = [title(i) for i in hist_items]
        cand_titles = [title(i) for i in cands]
        ratings = [inter[i].rating for i in hist] if self.history_ratings else None
        notes = [self.facts.note(i, u) for i in cands] if self.facts is not None else None
        answer = {c: self.answers.response(j, title(c)) for j, c in enumerate(cands)}
        question = self.answers.question(log.domain, cand_titles, notes, timed=self.timed)
        return Sample(
            id=f"{log.name}-candidates-{split}-{u}-{t}", task="candidates", domain=log.domain,
            prefix=prompts.history_prefix(log.domain, hist_titles, ratings, timed=self.timed),
            comparisons=[Comparison(question=question, chosen=answer[target], rejected=[answer[i] for i in rejected])],
            user=u, history=hist_titles, history_items=hist_items, candidates=cand_titles,
            candidate_items=cands, target=title(target), target_item=target,
            # the target's own rating; every other candidate is one the user never rated
            candidate_ratings=[inter[seq[t]].rating if i == target else None for i in cands]
            if log.value == "rating" else [], answer_format=self.answers.name)


def _build(log: Log, o: Options) -> Built:
    """The protocol with `prefrec data prepare`'s options (Options; the defaults of the task row)."""
    if o.threshold is not None:
        raise UserError("--threshold applies to the pairwise and yesno tasks; the candidates task uses no ratings")
    if o.negative_below is not None:
        raise UserError("--negative-below applies to the pairwise task")
    if o.per_user != 1:
        raise UserError("--per-user applies to the pairwise task (the candidates task already takes every position "
                        "of a user's timeline)")
    return build_candidates(log, seed=o.seed, negatives=o.negatives, n_candidates=o.n_candidates,
                            history_len=o.history_len, min_history=o.min_history, same_time=o.same_time,
                            answers=o.answers, history_ratings=o.history_ratings, item_stats=o.item_stats,
                            train_order=o.train_order or "time", **o.sizes())


# ---- scoring: likelihood ranking and generation ----

def candidate_list(s: Sample) -> tuple[list[str], int]:
    """(candidate titles, index of the target). Samples without a `candidates` field fall back to the comparison's
    chosen + rejected responses."""
    cands = list(s.candidates) or [s.comparisons[0].chosen] + list(s.comparisons[0].rejected)
    target = s.target if s.target is not None else s.comparisons[0].chosen
    if target not in cands:
        raise UserError(f"sample {s.id}: target {target!r} is not among its {len(cands)} candidates")
    if len(set(cands)) != len(cands):
        raise UserError(f"sample {s.id}: candidate titles are not unique")
    return cands, cands.index(target)


def candidate_answers(s: Sample) -> list[str]:
    """The response that names each candidate, in candidate order: its title, or its number (the sample's answer
    format)."""
    return TASK.format(s.answer_format).responses(candidate_list(s)[0])


def candidate_trees(tokenizer, samples: list[Sample], items: dict[str, int] | None = None) -> list[Tree]:
    """One tree per sample: the prompt of comparison 0 with every candidate's answer as a response (with item
    tokens when `items`, the model's id map, is given)."""
    if items is None:
        return [encode_texts(tokenizer, s.prefix, [s.comparisons[0].question], [candidate_answers(s)])
                for s in samples]
    marked = [mark_sample(s, items, [s.comparisons[0].question]) for s in samples]
    return [encode_texts(tokenizer, m.prefix, m.questions, [candidate_answers(s)], marked=True)
            for s, m in zip(samples, marked)]


def matched_candidate(s: Sample, answer: str) -> tuple[int | None, str]:
    """(candidate index or None, the rule that decided) of a generated answer, by the sample's answer format:
    titles through prefrec.scoring.matching, numbers and letters by their label."""
    cands = candidate_list(s)[0]
    fmt = TASK.format(s.answer_format)
    if fmt.read is None:
        return match(answer, cands)
    j = fmt.read(answer, len(cands))
    return j, (fmt.name if j is not None else "none")


def score_candidates(model, tokenizer, samples: list[Sample], *, max_tokens_per_batch: int = 4096,
                     progress: bool = True) -> list[dict]:
    """Per sample: target_index, rank_scores (summed logp of each candidate title + end-of-turn token) and
    rank_norm_scores (the same divided by the response's token count)."""
    trees = candidate_trees(tokenizer, samples, item_ids(model))
    nested = score_trees(model, trees, max_tokens_per_batch=max_tokens_per_batch, progress=progress,
                         desc="candidates").nested()
    out = []
    for s, tree, branches in zip(samples, trees, nested):
        summed = branches[0].double().numpy()
        lengths = np.array([len(r) for r in tree.branches[0].responses], dtype=np.float64)
        out.append({"id": s.id, "user": s.user, "target_index": candidate_list(s)[1], "rank_scores": summed.tolist(),
                    "rank_norm_scores": (summed / lengths).tolist()})
    return out


def answer_tries(tokenizer, samples: list[Sample]) -> list[AnswerTrie]:
    """The trie of each sample's candidate answers, tokenised as the scorer tokenises responses."""
    return [AnswerTrie([response_ids(tokenizer, a) for a in candidate_answers(s)], end_of_turn_id(tokenizer))
            for s in samples]


def generate_and_match(model, tokenizer, samples: list[Sample], rows: list[dict], *, max_new_tokens: int,
                       batch_size: int, progress: bool, constrained: bool = False,
                       backend: str = "transformers") -> dict:
    """Greedy answers matched to one candidate each (the sample's answer format), added to the rows (answer,
    matched, rule, valid, hit); returns HR@1 and ValidRatio, the papers' numbers. constrained: also decode through
    the candidates' trie, beside it (fields and metrics with the suffix _constrained; ValidRatio 1 by
    construction)."""
    out = {}
    for suffix in ("", "_constrained") if constrained else ("",):
        answers = generate_answers(model, tokenizer, samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   progress=progress, tries=answer_tries(tokenizer, samples) if suffix else None,
                                   backend="transformers" if suffix else backend)
        for r, a, s in zip(rows, answers, samples):  # each answer matched once: rows and metrics both use it
            j, rule = matched_candidate(s, a)
            r.update({f"answer{suffix}": a, f"matched{suffix}": j, f"rule{suffix}": rule,
                      f"valid{suffix}": j is not None, f"hit{suffix}": j is not None and j == r["target_index"]})
        rates = metrics.generation_rates([r[f"valid{suffix}"] for r in rows], [r[f"hit{suffix}"] for r in rows])
        out.update({f"{k}{suffix}": v for k, v in rates.items() if k != "n"})
    return out


# ---- metrics ----

# LLM rows: (metric name prefix, row field): summed log-probs and log-probs per token
LLM_RANKINGS = (("rank_", "rank_scores"), ("rank_norm_", "rank_norm_scores"))


def ranking_by_size(rows: list[dict], key: str, prefix: str) -> dict:
    """Ranking metrics of rows[i][key] against rows[i]["target_index"], `prefix` before each name. Rows may differ
    in length when samples show different numbers of candidates: each length is ranked apart, then the metrics are
    averaged with the number of rows of each length as weights."""
    parts = []
    for size in sorted({len(r[key]) for r in rows}):
        sel = [r for r in rows if len(r[key]) == size]
        m = metrics.ranking_metrics(np.array([r[key] for r in sel]), np.array([r["target_index"] for r in sel]))
        parts.append((m, len(sel)))
    return {prefix + name: float(sum(m[name] * n for m, n in parts) / len(rows)) for name in metrics.RANKING_METRICS}


def _row_metrics(rows: list[dict]) -> dict:
    """Baseline rows hold one score list per sample ("scores", every sample the same length); LLM rows hold
    rank_scores and rank_norm_scores (generation metrics, when asked, come from generate_and_match)."""
    if rows and "scores" in rows[0]:
        m = _scores_metrics(rows)
        m["valid_ratio"] = 1.0  # no generation: every answer is a candidate
        return m
    m = {}
    for prefix, key in LLM_RANKINGS:
        m.update(ranking_by_size(rows, key, prefix))
    m["n"] = len(rows)
    m["n_candidates"] = int(np.mean([len(r["rank_scores"]) for r in rows]))
    return m


def _scores_metrics(rows: list[dict]) -> dict:
    return metrics.ranking_metrics(np.array([r["scores"] for r in rows]), np.array([r["target_index"] for r in rows]))


def _key_metrics() -> list[str]:
    """Generation's HR@1 and ValidRatio, then every metrics.RANKING_METRICS row as the LLM's likelihood ranking
    (rank_…) and as the baselines' scores, read at call time, so a new ranking metric is shown without touching this
    file (a baseline's hr@1 is its ranking HR@1 under the generation column)."""
    rank = list(metrics.RANKING_METRICS)
    return ["hr@1", "valid_ratio", "hr@1_constrained"] + [f"rank_{m}" for m in rank] + \
        [m for m in rank if m != "hr@1"]


def _example(domain: str, answers: str) -> tuple[str, str, str]:
    cands = ["Alien (1979)", "Jaws (1975)", "Big (1988)"]
    fmt = TASK.format(answers)
    return example_prefix(domain), fmt.question(domain, cands), fmt.response(0, cands[0])


def _responses(sample: Sample):
    """Every shown candidate's answer (the target first), as likelihood ranking scores them."""
    if not (sample.candidates and sample.target in sample.candidates):
        return comparison_responses(sample)
    cands = list(dict.fromkeys(sample.candidates))
    fmt = TASK.format(sample.answer_format)
    order = [cands.index(sample.target)] + [i for i, c in enumerate(cands) if c != sample.target]
    return [sample.comparisons[0].question], [[fmt.response(i, cands[i]) for i in order]], \
        [[True] + [False] * (len(order) - 1)]


def _check(samples: list[Sample], where: str) -> None:
    for s in samples:
        if not s.candidates:
            raise UserError(f"{where}: sample {s.id}: the candidates task needs the 'candidates' list (every title "
                            f"its prompt shows); it is empty, so HR@k would be over chosen + rejected only")


# ---- prompt facts and the item prior ----

def _facts_features(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    question = s.comparisons[0].question
    got = [prompts.shown(question, t) for t in s.candidates]
    order = np.argsort(np.argsort([at for at, _ in got]))
    xs = [[*facts, order[i] / len(got)] for i, (_, facts) in enumerate(got)]
    return np.array(xs), np.array([float(t == s.target) for t in s.candidates])


def _llm(s: Sample, row: dict) -> np.ndarray:
    sc = np.asarray(row["rank_scores"] if "rank_scores" in row else row["scores"], float)
    return sc - sc.mean()


def _facts_rows(s: Sample, z: np.ndarray) -> dict:
    return {"scores": z.tolist(), "target_index": s.candidates.index(s.target)}


def _prior(prior, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate (smoothed mean, log(1 + n)), y = 1[target]. A fitted model rather than the smoothed mean itself:
    for the next item, popularity says more than quality, and the fit weighs them."""
    ids = candidate_ids(s)
    target = ids[s.candidates.index(s.target)]
    return np.array([prior.features(i, s.user) for i in ids]), np.array([float(i == target) for i in ids])


# ---- rank/serve and the ID baselines ----

def _rank_questions(domain: str, candidates: list[str], fmt: AnswerFormat) -> tuple[list[str], list[list[str]]]:
    return [fmt.question(domain, candidates)], [fmt.responses(candidates)]


def _rank_rows(tree: Tree, candidates: list[str], summed: list[float]) -> list[dict]:
    """score(c) = logp(answer(c) | x) (answer tokens + the end-of-turn token), and per token."""
    lengths = [len(r) for r in tree.branches[0].responses]
    return [{"title": c, "score": summed[i], "score_per_token": summed[i] / lengths[i], "n_tokens": lengths[i]}
            for i, c in enumerate(candidates)]


def _baseline_rows(keys: list[dict], scores: np.ndarray, target_index) -> list[dict]:
    return [{**key, "scores": row.tolist(), "target_index": int(t)} for key, row, t in zip(keys, scores, target_index)]


TASK = Task(
    name="candidates", formats=FORMATS, build=_build, score=score_candidates, metrics=_row_metrics,
    defaults={"negatives": 3, "history_len": 10, "min_history": 3, "n_train": 1000, "n_valid": 200, "n_test": 1000},
    key_metrics=_key_metrics, example=_example, responses=_responses, ratings=rated,
    facts=Facts(_facts_features, _llm, _facts_rows, "mrr", _scores_metrics, _prior),
    rank=Ranking(_rank_questions, _rank_rows),
    baseline=Baseline(_baseline_rows, positive_first=False, preference_pairs=False),
    generate=generate_and_match, check=_check,
)
