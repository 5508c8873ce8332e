"""Another user's history: does a model read the user at all?

`swap_histories` gives every sample the history of a sample of *another* user, and keeps everything else: the
candidates, the target, the question, the id. A model scored on the swapped samples sees the same items to rank with
someone else's past. What it loses against its own-history score (paired by sample id, resampling users) is what it
reads from the user; a model that ranks by what the items are (their popularity, the population's taste) loses
nothing. The ID baselines that model the user (SASRec) fall to their item prior; that is the scale.

The histories are permuted, not drawn: every test history is used once, so the swapped set shows the model the same
histories as the original, each beside another user's candidates. A donor's history never holds one of the
receiver's candidates (the protocols keep a user's own history out of their candidates; a swap that put the target
in the history would tell the model something, or hide it).
"""

from __future__ import annotations

import dataclasses
import random

from prefrec.errors import UserError
from prefrec.samples import Sample

_TRIES = 200  # random partners tried per conflicting sample before giving up (a conflict has most partners free)


def swap_histories(samples: list[Sample], seed: int = 0) -> list[Sample]:
    """Each sample with the prefix, history and history items of a sample of another user (a seeded permutation of
    the samples' histories); the same ids, questions, candidates and targets.

    The prefix moves whole because the protocols write the user's history there and the items to rank in the
    question (checked: every history title must be in its own prefix)."""
    if len({_user(s) for s in samples}) < 2:
        raise UserError(f"swapping histories needs samples of at least two users; these {len(samples)} have one")
    for s in samples:
        _check_history_in_prefix(s)
    rng = random.Random(seed)
    donor = list(range(len(samples)))
    rng.shuffle(donor)
    for i in range(len(samples)):
        if not _fits(samples, i, donor[i]):
            _repair(samples, donor, i, rng)
    return [dataclasses.replace(s, prefix=samples[d].prefix, history=list(samples[d].history),
                                history_items=list(samples[d].history_items))
            for s, d in zip(samples, donor)]


def _user(s: Sample) -> str:
    return s.user if s.user is not None else f"sample {s.id}"  # no user recorded: each sample its own


def _check_history_in_prefix(s: Sample) -> None:
    """The swap moves the prefix: it must be where the history is."""
    for title in s.history:
        if title not in s.prefix:
            raise UserError(f"sample {s.id}: history title {title!r:.60} is not in its prefix; swapping the prefix "
                            "would not swap the history (a prompt that shows the history in its question)")


def _fits(samples: list[Sample], i: int, d: int) -> bool:
    """Whether sample d's history can go to sample i: another user's, sharing no item with i's candidates."""
    a, b = samples[i], samples[d]
    if _user(a) == _user(b):
        return False
    if a.candidate_items and b.history_items:
        return not set(a.candidate_items) & set(b.history_items)
    return not set(a.candidates) & set(b.history)


def _repair(samples: list[Sample], donor: list[int], i: int, rng: random.Random) -> None:
    """Exchange i's donor with another sample's so that both fit."""
    n = len(samples)
    for _ in range(_TRIES):
        j = rng.randrange(n)
        if j != i and _fits(samples, i, donor[j]) and _fits(samples, j, donor[i]):
            donor[i], donor[j] = donor[j], donor[i]
            return
    raise UserError(f"sample {samples[i].id}: found no other user's history without one of its candidates in "
                    f"{_TRIES} tries; too few users or histories that share its candidates")
