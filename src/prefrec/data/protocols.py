"""Turn a normalised `Log` into samples, exactly per the published protocols (docs/data.md). Defaults = the papers.

Three builders, one per task; each returns a `Built` (samples per split + what stats.json needs):

build_pairwise  DMPO (Bai et al., DMPO §4.1, §5.1, §5.4). Ratings > 3 are positives, ≤ 3 negatives. Users with at
    least 5 positives and 5 negatives are eligible. Eligible users are shuffled by the seed and split disjointly into
    100 train / 100 valid / 1000 test users, one sample each. A sample holds out one positive (drawn uniformly among
    the user's positives that have at least `min_history + k` earlier interactions) and k negatives (drawn uniformly
    among the user's negatives; default k = 1). History = the user's interactions before the positive in time order
    (equal timestamps keep file order; --same-time drop leaves them out), minus the held-out negatives and any item
    sharing a title with the positive or a negative, the last 40. Comparison i asks to
    rank the positive and negative i, shown in a seed-shuffled order; chosen = "positive, negative_i", rejected =
    ["negative_i, positive"].

build_candidates  S-DPO (Chen et al. 2024) on LLaRA's setting (Liao et al. 2024). Next-item prediction over each
    user's time-ordered sequence: the sample at position t has the item at t as target and the ≤ 10 items before it
    as history; samples with < 3 history items are dropped. 20 candidates = the target + 19 items drawn uniformly
    from the items the user never interacted with (anywhere in the log), in a seed-shuffled order; rejected = k of
    the 19 (default 3). Split 8:1:1 chronologically: all samples are ordered by their target's timestamp (ties:
    user, then position) and cut at 80 % and 90 %. Without timestamps (LastFM, Goodreads CSV) each user's own
    sequence, in its seeded random order (see `sequences`), is cut instead: the last 10 % of a user's targets are
    test, the 10 % before valid; the prompts then claim no time order. Samples are not
    user-disjoint (as in LLaRA / S-DPO). Each split is then capped to --train/--valid/--test samples, drawn
    uniformly by the seed and kept in time order.

build_yesno  TALLRec (Bao et al. 2023). A user's target interaction (drawn uniformly among positions with at least
    10 earlier interactions) and the 10 interactions before it, split into liked (> 3) and disliked titles; the
    answer is "Yes." when the target is liked. Users split disjointly like the pairwise task, one sample each.

Play counts (LastFM) have no "> 3 stars": `liked_flags` then marks, per user, the top half of the user's artists by
play count as liked (positives) and the rest as not liked (negatives); with an odd count the middle one is not
liked. No history shows a title of its own sample (one title with two item ids), and a log without timestamps is
never ordered by file or id (see `sequences`). Everything random comes from `random.Random` seeded with a string built from the seed, the task and the
user (and position), so a user's sample does not change when other users are added or removed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

from prefrec import prompts
from prefrec.answers import LETTER, answer_format
from prefrec.data.readers import Log
from prefrec.errors import UserError
from prefrec.samples import Comparison, Sample

SPLITS = ("train", "valid", "test")


@dataclass
class Built:
    samples: dict[str, list[Sample]]
    interaction_split: list[str]  # per interaction of the log: train | valid | test | unused
    users_eligible: int
    filters: list[dict]  # [{"name", "users", "items", "interactions"}] after each filter, in order
    warnings: list[str]
    requested: dict[str, int | None]  # requested split sizes (None = all)
    protocol: dict  # every parameter, for stats.json
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces


def user_key(user: str):
    """Natural order of user ids ("2" before "10"), so shuffles depend on the seed only."""
    return (0, int(user), "") if user.isdigit() else (1, 0, user)


def sequences(log: Log, seed: int | None) -> dict[str, list[int]]:
    """Each user's interaction indices in the order the protocols treat as time.

    With timestamps: time order, equal timestamps keep file order (the stable sort breaks ties by index). Without
    them, file order is not time (LastFM's files are sorted by artist id, so "the next id" would give the answer
    away): each user's interactions are shuffled by a generator seeded with `seed` and the user, unless the user
    said the file is in time order (`Log.order_by == "file"`). seed=None keeps file order, for uses where the order
    does not matter (which of two repeated rows to keep)."""
    seqs: dict[str, list[int]] = {}
    for idx, x in enumerate(log.interactions):
        seqs.setdefault(x.user, []).append(idx)
    if log.has_timestamps:
        inter = log.interactions
        for s in seqs.values():
            s.sort(key=lambda i: inter[i].timestamp)
    elif log.order_by != "file" and seed is not None:
        for u, s in seqs.items():
            random.Random(f"{seed}:order:{u}").shuffle(s)
    return seqs


def timed(log: Log) -> bool:
    """Does the protocols' order of a user's interactions mean time (so a prompt may say "oldest first")?"""
    return log.has_timestamps or log.order_by == "file"


def order_note(log: Log) -> str:
    """stats.json `history_order`: what orders each user's interactions."""
    if log.has_timestamps:
        col = f"column '{log.order_by}'" if log.order_by else "timestamp"
        return f"{col}, ties by file order"
    if log.order_by == "file":
        return "file order (--order-by file: the user says the file is in time order)"
    return "seeded random order per user (no timestamps; file and id order are not time)"


def _order_warnings(log: Log) -> list[str]:
    if timed(log):
        return []
    return [f"{log.name} has no timestamps: each user's interactions are put in a random order seeded by --seed "
            "(file and id order are not time), the prompts say 'in no particular order' and no sample claims to "
            "be the next item in time; name a time column with --order-by COLUMN (or --order-by file) if the "
            "log has one"]


def before_counts(log: Log, seqs: dict[str, list[int]], same_time: str) -> dict[str, list[int]]:
    """Per user and sequence position t: how many of the user's interactions count as before t. same_time="keep"
    (the papers' code: a stable sort, history = the positions before t): t. same_time="drop": interactions with
    t's exact timestamp are simultaneous, not earlier, so only those with a smaller timestamp count."""
    if same_time not in ("keep", "drop"):
        raise UserError(f"--same-time must be 'keep' or 'drop', got {same_time!r}")
    if same_time == "keep" or not log.has_timestamps:
        return {u: list(range(len(seq))) for u, seq in seqs.items()}
    inter, out = log.interactions, {}
    for u, seq in seqs.items():
        first = []
        for t, i in enumerate(seq):
            same = t > 0 and inter[seq[t - 1]].timestamp == inter[i].timestamp
            first.append(first[t - 1] if same else t)
        out[u] = first
    return out


def same_time_note(log: Log, same_time: str, samples: dict[str, list[Sample]]) -> dict:
    """stats.json `same_time_history`: the rule, and how many samples show a history item with the target's exact
    timestamp (0 under "drop")."""
    ts = {(x.user, x.item): x.timestamp for x in log.interactions}
    n = sum(any(ts.get((s.user, i)) == ts.get((s.user, s.target_item)) for i in s.history_items)
            for v in samples.values() for s in v) if log.has_timestamps else 0
    rule = ("kept: an interaction with the target's exact timestamp but earlier in file order is history (the "
            "papers' stable sort)" if same_time == "keep" else
            "dropped: only interactions with an earlier timestamp than the target's are history")
    return {"rule": rule, "samples_with_same_time_history": n}


def history_before(log: Log, seq: list[int], n_before: int, limit: int, exclude_titles: set[str],
                   skip: set[int] = frozenset()) -> tuple[list[int], int]:
    """The history shown for a target: the last `limit` of the user's first `n_before` interactions (oldest
    first), leaving out positions in `skip` (held-out negatives) and items whose casefolded title is in
    `exclude_titles` (one title under two item ids must not show the answer in its own history). Returns
    (interaction indices, number of title twins left out)."""
    inter, title = log.interactions, log.title
    hist, twins = [], 0
    for j in range(n_before - 1, -1, -1):
        if len(hist) == limit:
            break
        if j in skip:
            continue
        i = seq[j]
        if exclude_titles and title(inter[i].item).casefold() in exclude_titles:
            twins += 1
            continue
        hist.append(i)
    hist.reverse()
    return hist, twins


def liked_flags(log: Log, threshold: float = 3.0) -> list[bool]:
    """Per interaction: is it a positive? Ratings: rating > threshold. Play counts: in the top half of the user's
    items by count (ties broken by file order)."""
    inter = log.interactions
    if log.value == "rating":
        return [x.rating > threshold for x in inter]
    flags = [False] * len(inter)
    by_user: dict[str, list[int]] = {}
    for idx, x in enumerate(inter):
        by_user.setdefault(x.user, []).append(idx)
    for idxs in by_user.values():
        ranked = sorted(idxs, key=lambda i: (-inter[i].rating, i))
        for i in ranked[: len(idxs) // 2]:
            flags[i] = True
    return flags


def counts(log: Log, users: set[str] | None = None) -> dict[str, int]:
    """users / items / interactions of the log restricted to `users` (all users if None)."""
    rows = log.interactions if users is None else [x for x in log.interactions if x.user in users]
    return {"users": len({x.user for x in rows}), "items": len({x.item for x in rows}), "interactions": len(rows)}


def split_sizes(n: int, requested: dict[str, int | None], what: str = "eligible users") -> tuple[dict[str, int], list[str]]:
    """Sizes of the user-disjoint splits. When there are too few users, test shrinks first, then valid, then train;
    each shrink is reported. A split requested as None takes all the users the others leave."""
    nones = [s for s in SPLITS if requested[s] is None]
    if len(nones) > 1:
        raise UserError(f"only one of --train/--valid/--test may be 'all', got {nones}")
    need = {s: (1 if requested[s] is None or requested[s] > 0 else 0) for s in SPLITS}
    if n < sum(need.values()):
        raise UserError(f"only {n} {what}, too few for one user per split ({sum(need.values())} needed); "
                        "lower the protocol's thresholds or use a larger dataset")
    want = {s: (requested[s] if requested[s] is not None else n) for s in SPLITS}
    if nones:
        fixed = sum(want[s] for s in SPLITS if s != nones[0])
        want[nones[0]] = max(need[nones[0]], n - fixed)
    size = dict(want)
    size["test"] = min(want["test"], max(need["test"], n - want["train"] - want["valid"]))
    size["valid"] = min(want["valid"], max(need["valid"], n - want["train"] - size["test"]))
    size["train"] = min(want["train"], n - size["valid"] - size["test"])
    warnings = []
    for s in SPLITS:
        if size[s] < want[s] and requested[s] is not None:
            warnings.append(f"only {n} {what}: the {s} split has {size[s]} users instead of the requested {want[s]}")
    return size, warnings


def _assign_users(users: list[str], seed: int, task: str, sizes: dict[str, int]) -> dict[str, str]:
    order = sorted(users, key=user_key)
    random.Random(f"{seed}:{task}:users").shuffle(order)
    out, start = {}, 0
    for s in SPLITS:
        for u in order[start:start + sizes[s]]:
            out[u] = s
        start += sizes[s]
    return out


def _filter_row(name: str, log: Log, users: set[str]) -> dict:
    return {"name": name, **counts(log, users)}


def _check_common(history_len: int, min_history: int) -> None:
    if history_len < 1:
        raise UserError(f"--history-len must be ≥ 1, got {history_len}")
    if min_history < 0:
        raise UserError(f"min_history must be ≥ 0, got {min_history}")


class ItemFacts:
    """Collaborative facts for the hybrid prompt option: per item, how many users interacted with it and their mean
    rating, over the interactions marked `use` (the training side of the split: never a test interaction).

    `note(item, user)` leaves the sample's own user out, so a training sample never shows a count or mean that
    includes its own held-out answer, and training and test samples show facts of the same kind."""

    def __init__(self, log: Log, use: list[bool]):
        self.rated = log.value == "rating"
        self.total: dict[str, tuple[int, float]] = {}
        self.own: dict[tuple[str, str], float] = {}
        for x, used in zip(log.interactions, use):
            if used:
                c, s = self.total.get(x.item, (0, 0.0))
                self.total[x.item] = (c + 1, s + x.rating)
                self.own[(x.user, x.item)] = x.rating

    def note(self, item: str, user: str) -> str:
        c, s = self.total.get(item, (0, 0.0))
        mine = self.own.get((user, item))
        if mine is not None:
            c, s = c - 1, s - mine
        return prompts.item_note(c, (s / c if c else None) if self.rated else None, rated=self.rated)


def _check_options(log: Log, history_ratings: bool) -> None:
    if history_ratings and log.value != "rating":
        raise UserError(f"--history-ratings needs a log of ratings; {log.name} has {log.value} values")


def _negative_flags(log: Log, liked: list[bool], threshold: float, negative_below: float | None) -> list[bool]:
    """Per interaction: is it a negative? The rest (default), or, with negative_below (the papers' other reading:
    negatives < 3), only ratings below it; ratings in between are neither (they stay in the history)."""
    if negative_below is None:
        return [not f for f in liked]
    if log.value != "rating":
        raise UserError(f"--negative-below needs a log of ratings; {log.name} has {log.value} values (negatives "
                        "are the bottom half of each user's play counts)")
    if negative_below > threshold:
        raise UserError(f"--negative-below ({negative_below:g}) must not exceed --threshold ({threshold:g}): a "
                        "rating would be both a positive and a negative")
    return [x.rating < negative_below for x in log.interactions]


# ---------------------------------------------------------------------------------------------------------------
# DMPO pairwise


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
    answer_format(answers, "pairwise")
    for flag, value in (("--negatives", negatives), ("--per-user", per_user)):
        if value < 1:
            raise UserError(f"{flag} must be ≥ 1 for the pairwise task, got {value}")
    _check_common(history_len, min_history)
    _check_options(log, history_ratings)
    inter = log.interactions
    seqs, liked = sequences(log, seed), liked_flags(log, threshold)
    disliked = _negative_flags(log, liked, threshold, negative_below)
    before = before_counts(log, seqs, same_time)
    need_neg = max(min_neg, negatives)
    pos_neg_ok, eligible = _pairwise_users(seqs, liked, disliked, before, min_pos, need_neg,
                                           min_history + negatives)
    kind = "rating > %g" % threshold if log.value == "rating" else "top half of the user's play counts"
    filters = [_filter_row(f"≥{min_pos} positives ({kind}) and ≥{need_neg} negatives", log, pos_neg_ok),
               _filter_row(f"a positive with ≥{min_history + negatives} earlier interactions", log, set(eligible))]
    requested = {"train": n_train, "valid": n_valid, "test": n_test}
    sizes, warnings = split_sizes(len(eligible), requested, f"eligible users (≥{min_pos} positives, ≥{need_neg} "
                                                           f"negatives, a positive with ≥{min_history + negatives} "
                                                           "earlier interactions)")
    user_split = _assign_users(list(eligible), seed, "pairwise", sizes)
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
                                      tally=tally, answers=answers, sid=f"{log.name}-pairwise-{split}-{u}" + (f"-{n}" if n else ""))
            if sample is None:
                dropped += 1
            else:
                samples[split].append(sample)
                rank[sample.id] = (n, ui)
    # round-robin over users (every user's first sample, then every second one, ...), so that the first N training
    # samples (data.max_train_samples, a learning curve's x) cover as many users as they can
    samples["train"].sort(key=lambda x: rank[x.id])
    warnings += [f"{dropped} sampled positives were dropped: fewer than {negatives} negatives with a title different "
                 "from the held-out positive's"] * bool(dropped) + _order_warnings(log)
    filters.append(_filter_row("sampled into train/valid/test", log, {s.user for v in samples.values() for s in v}))
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
                     n_before: int | None = None, tally: dict | None = None, answers: str = "title") -> Sample | None:
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
        question = prompts.pairwise_question(log.domain, a, b, notes, answers=answers)
        if answers == LETTER:  # option A is the first shown
            chosen, rejected = ("A", "B") if first_pos else ("B", "A")
        else:
            chosen, rejected = prompts.format_ordering(pos_title, n_title), prompts.format_ordering(n_title, pos_title)
        comps.append(Comparison(question=question, chosen=chosen, rejected=[rejected]))
    ratings = [inter[i].rating for i in hist] if history_ratings else None
    return Sample(id=sid, task="pairwise", domain=log.domain,
                  prefix=prompts.history_prefix(log.domain, hist_titles, ratings, timed=timed(log)),
                  comparisons=comps, user=u,
                  history=hist_titles, history_items=hist_items, candidates=[pos_title] + [title(i) for i in neg_items],
                  candidate_items=[pos_item] + neg_items, target=pos_title, target_item=pos_item,
                  candidate_ratings=[inter[seq[j]].rating for j in [p] + chosen_negs] if log.value == "rating" else [],
                  answer_format=answers)


# ---------------------------------------------------------------------------------------------------------------
# S-DPO / LLaRA candidates


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
                     answers: str = "title") -> Built:
    answer_format(answers, "candidates")
    if n_candidates < 2:
        raise UserError(f"--candidates must be ≥ 2, got {n_candidates}")
    if not 1 <= negatives <= n_candidates - 1:
        raise UserError(f"--negatives must be between 1 and {n_candidates - 1} (the non-target candidates), got {negatives}")
    _check_common(history_len, min_history)
    _check_options(log, history_ratings)
    min_history = max(min_history, 1)
    seqs = sequences(log, seed)
    before = before_counts(log, seqs, same_time)
    urank = {u: r for r, u in enumerate(sorted(seqs, key=user_key))}
    eligible_users = {u for u, seq in seqs.items() if len(seq) > min_history and before[u][-1] >= min_history}
    if not eligible_users:
        raise UserError(f"no user has more than {min_history} interactions, so there is no next-item sample")
    filters = [_filter_row(f">{min_history} interactions (a target with ≥{min_history} history items)", log, eligible_users)]
    # every (user, position t ≥ min_history) is a potential sample; Sample objects are built only for the kept ones
    by_split, interaction_split, mode = _candidate_splits(log, seqs, before, urank, min_history, ratios)
    potential = {s: len(by_split[s]) for s in SPLITS}
    requested = {"train": n_train, "valid": n_valid, "test": n_test}
    _cap_splits(by_split, requested, seed)
    # item facts from the training period only (each sample leaves its own user out)
    facts = ItemFacts(log, [sp == "train" for sp in interaction_split]) if item_stats else None
    make = _CandidateMaker(log, seqs, before, seed, negatives, n_candidates, history_len, history_ratings, facts,
                           answers)
    samples = {s: [x for x in (make(s, u, t) for u, t in by_split[s]) if x is not None] for s in SPLITS}
    warnings: list[str] = []
    if make.skipped:
        warnings.append(f"{make.skipped} samples were skipped: fewer than {n_candidates - 1} items with distinct "
                        "titles that the user never interacted with")
    warnings += _order_warnings(log)
    filters.append(_filter_row("users with a sample kept in train/valid/test", log,
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
                           "history_title_twins_removed": make.twins_removed})


class _CandidateMaker:
    """One candidates sample per kept (user, position): 19 sampled never-seen items + the target, shuffled, the
    history before the target, and the answers in the chosen format. Counts what it had to skip."""

    def __init__(self, log, seqs, before, seed, negatives, n_candidates, history_len, history_ratings, facts,
                 answers):
        self.log, self.seqs, self.before, self.seed = log, seqs, before, seed
        self.negatives, self.n_candidates, self.history_len = negatives, n_candidates, history_len
        self.history_ratings, self.facts, self.answers = history_ratings, facts, answer_format(answers)
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
        question = prompts.candidates_question(log.domain, cand_titles, notes, timed=self.timed,
                                               answers=self.answers.name)
        return Sample(
            id=f"{log.name}-candidates-{split}-{u}-{t}", task="candidates", domain=log.domain,
            prefix=prompts.history_prefix(log.domain, hist_titles, ratings, timed=self.timed),
            comparisons=[Comparison(question=question, chosen=answer[target], rejected=[answer[i] for i in rejected])],
            user=u, history=hist_titles, history_items=hist_items, candidates=cand_titles,
            candidate_items=cands, target=title(target), target_item=target,
            # the target's own rating; every other candidate is one the user never rated
            candidate_ratings=[inter[seq[t]].rating if i == target else None for i in cands]
            if log.value == "rating" else [], answer_format=self.answers.name)


# ---------------------------------------------------------------------------------------------------------------
# TALLRec yes/no


def build_yesno(log: Log, *, seed: int = 0, threshold: float = 3.0, history_len: int = 10, min_history: int = 10,
                n_train: int | None = 64, n_valid: int | None = 100, n_test: int | None = 1000,
                same_time: str = "keep", history_ratings: bool = False, item_stats: bool = False) -> Built:
    """TALLRec: liked and disliked history titles, "will the user enjoy T?", Yes./No. With history_ratings the
    history is shown with the user's ratings instead (the hybrid prompt of the other tasks); with item_stats the
    target carries its facts from users outside the test split."""
    _check_common(history_len, min_history)
    _check_options(log, history_ratings)
    min_history = max(min_history, 1)
    inter, title = log.interactions, log.title
    seqs, liked = sequences(log, seed), liked_flags(log, threshold)
    before = before_counts(log, seqs, same_time)
    eligible = [u for u, seq in seqs.items() if len(seq) > min_history and before[u][-1] >= min_history]
    filters = [_filter_row(f">{min_history} interactions", log, set(eligible))]
    requested = {"train": n_train, "valid": n_valid, "test": n_test}
    sizes, warnings = split_sizes(len(eligible), requested, f"eligible users (>{min_history} interactions)")
    user_split = _assign_users(eligible, seed, "yesno", sizes)
    facts = ItemFacts(log, [user_split.get(x.user) != "test" for x in inter]) if item_stats else None
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    twins_removed = 0
    for u in sorted(user_split, key=user_key):
        rng = random.Random(f"{seed}:yesno:{u}")
        seq = seqs[u]
        if same_time == "keep":
            t = rng.randrange(min_history, len(seq))
        else:
            t = rng.choice([t for t in range(len(seq)) if before[u][t] >= min_history])
        hist, n_twins = history_before(log, seq, before[u][t], history_len, {title(inter[seq[t]].item).casefold()})
        twins_removed += n_twins > 0
        hist_items = [inter[i].item for i in hist]
        liked_titles = [title(inter[i].item) for i in hist if liked[i]]
        disliked_titles = [title(inter[i].item) for i in hist if not liked[i]]
        target = inter[seq[t]].item
        label = int(liked[seq[t]])
        yes_no = (prompts.YES, prompts.NO) if label else (prompts.NO, prompts.YES)
        split = user_split[u]
        prefix = prompts.history_prefix(log.domain, [title(i) for i in hist_items], [inter[i].rating for i in hist],
                                        timed=timed(log)) if history_ratings else \
            prompts.yesno_prefix(log.domain, liked_titles, disliked_titles)
        note = facts.note(target, u) if facts is not None else None
        samples[split].append(Sample(
            id=f"{log.name}-yesno-{split}-{u}", task="yesno", domain=log.domain, prefix=prefix,
            comparisons=[Comparison(question=prompts.yesno_question(log.domain, title(target), note),
                                    chosen=yes_no[0], rejected=[yes_no[1]])],
            user=u, history=[title(i) for i in hist_items], history_items=hist_items, candidates=[title(target)],
            candidate_items=[target], target=title(target), target_item=target, label=label))
    filters.append(_filter_row("sampled into train/valid/test", log, set(user_split)))
    warnings += _order_warnings(log)
    kind = "rating > %g" % threshold if log.value == "rating" else "top half of the user's play counts"
    return Built(samples=samples, interaction_split=[user_split.get(x.user, "unused") for x in inter],
                 users_eligible=len(eligible), filters=filters, warnings=warnings, requested=requested,
                 protocol={"name": "TALLRec yes/no", "liked": kind, "history_len": history_len,
                           "min_history": min_history, "user_disjoint": True, "history_ratings": history_ratings,
                           "item_stats": "users outside the test split, the sample's own user left out"
                           if item_stats else False,
                           "history_order": order_note(log),
                           "same_time_history": same_time_note(log, same_time, samples),
                           "history_title_twins_removed": twins_removed})
