"""The pieces every data protocol shares (docs/dev/extending.md): a user's time order, split sizes, user-disjoint
split assignment, "liked" flags, the history before a target, the item facts of the hybrid prompt, and `Built`, what
a protocol returns. The protocols themselves (DMPO pairwise, S-DPO candidates, TALLRec yes/no) live with their
tasks in prefrec.tasks; `Options` is what `prefrec data prepare` passes to each of them.

Play counts (LastFM) have no "> 3 stars": `liked_flags` then marks, per user, the top half of the user's artists by
play count as liked (positives) and the rest as not liked (negatives); with an odd count the middle one is not
liked. No history shows a title of its own sample (one title with two item ids), and a log without timestamps is
never ordered by file or id (see `sequences`). Everything random comes from `random.Random` seeded with a string
built from the seed, the task and the user (and position), so a user's sample does not change when other users are
added or removed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from prefrec import prompts
from prefrec.data.readers import Log
from prefrec.errors import UserError
from prefrec.samples import Sample

SPLITS = ("train", "valid", "test")
UNSET = object()  # an option left out: the task's default (None means "all" for split sizes)


@dataclass
class Built:
    samples: dict[str, list[Sample]]
    interaction_split: list[str]  # per interaction of the log: train | valid | test | unused
    users_eligible: int
    filters: list[dict]  # [{"name", "users", "items", "interactions"}] after each filter, in order
    warnings: list[str]
    requested: dict[str, int | None]  # requested split sizes (None = all)
    protocol: dict  # every parameter, for stats.json
    extra: dict = field(default_factory=dict)  # more stats.json fields of the task (yes/no: labels_positive)


@dataclass(frozen=True)
class Options:
    """Every option of `prefrec data prepare`, as given (None: the task's default, from its `defaults`). Each task's
    protocol reads the ones it takes and refuses, by flag, one given that it would ignore."""
    seed: int = 0
    negatives: int | None = None
    history_len: int | None = None
    min_history: int | None = None
    n_train: int | None = None
    n_valid: int | None = None
    n_test: int | None = None
    threshold: float | None = None  # liked = rating > threshold (default 3)
    min_pos: int = 5
    min_neg: int = 5
    n_candidates: int = 20
    per_user: int = 1
    history_ratings: bool = False
    item_stats: bool = False
    negative_below: float | None = None
    same_time: str = "keep"
    answers: str = "title"
    train_order: str | None = None  # candidates: time (the papers) | round-robin

    @property
    def liked_above(self) -> float:
        return 3.0 if self.threshold is None else self.threshold

    def sizes(self) -> dict:
        return {"n_train": self.n_train, "n_valid": self.n_valid, "n_test": self.n_test}


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


def order_warnings(log: Log) -> list[str]:
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


def assign_users(users: list[str], seed: int, task: str, sizes: dict[str, int]) -> dict[str, str]:
    order = sorted(users, key=user_key)
    random.Random(f"{seed}:{task}:users").shuffle(order)
    out, start = {}, 0
    for s in SPLITS:
        for u in order[start:start + sizes[s]]:
            out[u] = s
        start += sizes[s]
    return out


def filter_row(name: str, log: Log, users: set[str]) -> dict:
    return {"name": name, **counts(log, users)}


def check_common(history_len: int, min_history: int) -> None:
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


def check_options(log: Log, history_ratings: bool) -> None:
    if history_ratings and log.value != "rating":
        raise UserError(f"--history-ratings needs a log of ratings; {log.name} has {log.value} values")


def negative_flags(log: Log, liked: list[bool], threshold: float, negative_below: float | None) -> list[bool]:
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


