"""What a recommender could know without reading the user: the item prior, the `item-prior` baseline, the floor
test and the prior-matched slice.

Per item, from a prepared folder's log (interactions.tsv), counting only the interactions of users who have no test
sample and whose split is not "test" (user-disjoint protocols: every non-test user, as `prepare --item-stats`;
chronological ones: the train and valid periods of users who are never tested):

    smoothed mean   (Σ values + w · global mean) / (n + w), w = 5 pseudo-interactions at the global mean (Bayesian
                    shrinkage: one 5-star rating says less than 300 ratings averaging 4.2). The value is the rating;
                    for a log of play counts, 1 when the play count is in the top half of the user's (the protocols'
                    "liked"), else 0, so the mean is a liked share.
    log(1 + n)      n = the item's number of counted interactions (raters)

A training sample's own user is left out of its items' numbers (as `prepare --item-stats` does), so a training
positive never carries its own label; test users are not counted at all.

1. **item-prior** (`prefrec baseline item-prior`): a logistic model (facts.py's fitting code) fit on the training
   samples, scored on the test samples, per task:
       pairwise    per comparison, x = (Δ smoothed mean, Δ log(1 + n)) of first-shown − second-shown, y = 1[the
                   positive is shown first]; the intercept is the shown order (differences: swapping the two items
                   must flip the answer)
       candidates  per candidate, x = (smoothed mean, log(1 + n)), y = 1[target]. A fitted model rather than the
                   smoothed mean itself: for the next item, popularity says more than quality, and the fit weighs them
       yesno       x = the target's (smoothed mean, log(1 + n)), y = label
2. **the floor**: facts.added_to_facts with the prompt-facts features and the item prior's side by side
   (`floor_task`): does the LLM add to what it could know without the user?
3. **the prior-matched slice** (pairwise): the comparisons whose two smoothed means differ by at most the 25th
   percentile of |Δ| over the samples file's test comparisons (a quantile, not a fixed number of stars, so it holds
   about a quarter of the comparisons on any scale, liked shares included). AUC there above 0.5 means the method
   reads the user.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np

from prefrec.data.prepared import Event, Prepared, load_prepared, read_split, read_stats
from prefrec.errors import UserError
from prefrec.evaluation import facts
from prefrec.samples import Sample
from prefrec.tasks import task as task_row
from prefrec.tasks.base import Facts, candidate_ids

PRIOR_WEIGHT = 5.0  # w: pseudo-interactions at the global mean
SLICE_QUANTILE = 0.25  # the slice holds about this share of the test comparisons


@dataclasses.dataclass(frozen=True)
class ItemPrior:
    stats: dict  # item -> (n, sum of values)
    own: dict  # (user, item) -> that user's value, to leave a training sample's own user out
    mean: float  # the global mean value
    kind: str  # "mean rating" | "liked share"

    def features(self, item: str, user: str | None = None) -> tuple[float, float]:
        """(smoothed mean, log(1 + n)) of an item, `user`'s own interaction left out."""
        n, total = self.stats.get(item, (0, 0.0))
        mine = self.own.get((user, item))
        if mine is not None:
            n, total = n - 1, total - mine
        return (total + PRIOR_WEIGHT * self.mean) / (n + PRIOR_WEIGHT), math.log1p(n)


def _play_counts(prep: Prepared) -> bool:
    """Whether the folder's log holds play counts, not ratings (the protocol says how it defines "liked")."""
    return "play count" in json.dumps(read_stats(prep.path).get("protocol") or {})


def _values(events: list[Event], play_counts: bool) -> list[float | None]:
    """Per event: the rating, or for play counts 1.0 in the top half of the user's counts (ties: earlier first)."""
    if not play_counts:
        return [e.rating for e in events]
    order = sorted(range(len(events)), key=lambda i: (-(events[i].rating or 0.0), i))
    top = set(order[:len(events) // 2])
    return [float(i in top) for i in range(len(events))]


def item_prior(prep: Prepared) -> ItemPrior:
    """The item prior of a prepared folder (module docstring): its non-test users' non-test interactions."""
    if prep.logs is None:
        raise UserError(f"{prep.path}: the item prior needs interactions.tsv and samples with item ids (imported "
                        "prompts have neither)")
    tested = {s.user for s in prep.test}
    play_counts = _play_counts(prep)
    stats, own = {}, {}
    for user, events in prep.logs.items():
        if user in tested:
            continue
        for e, v in zip(events, _values(events, play_counts)):
            if e.split != "test" and v is not None:
                n, total = stats.get(e.item, (0, 0.0))
                stats[e.item] = (n + 1, total + v)
                own[(user, e.item)] = v
    if not stats:
        raise UserError(f"{prep.path / 'interactions.tsv'}: no rated interaction of a non-test user outside the test "
                        "split, so there is no item prior")
    mean = sum(t for _, t in stats.values()) / sum(n for n, _ in stats.values())
    return ItemPrior(stats, own, mean, "liked share" if play_counts else "mean rating")


# ---- features per task: each task's Facts row says the item prior's features of its prompt-facts units ----

def prior_task(prior: ItemPrior, task: str) -> Facts:
    """The task's prompt-facts row with the item prior's features instead of the prompt's."""
    row = task_row(task).facts
    return dataclasses.replace(row, features=functools.partial(row.prior, prior))


def _both(prior: ItemPrior, row: Facts, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    x, y = row.features(s)
    return np.column_stack([x, row.prior(prior, s)[0]]), y


def floor_task(prior: ItemPrior, task: str) -> Facts:
    """prompt-facts ∪ item-prior: both models' features side by side, the floor an LLM's score is added to."""
    row = task_row(task).facts
    return dataclasses.replace(row, features=functools.partial(_both, prior, row))


def item_prior_rows(prior: ItemPrior, train: list[Sample], test: list[Sample]) -> list[dict]:
    """Per-sample rows of the item-prior baseline: fit on `train`, scored on `test` (the task's row format)."""
    return facts.prompt_facts_rows(train, test, task=prior_task(prior, test[0].task))


# ---- the prior-matched slice ----

def mean_gaps(prior: ItemPrior, s: Sample) -> np.ndarray:
    """Per comparison of a pairwise sample: |smoothed mean(positive) − smoothed mean(negative_j)|."""
    ids = candidate_ids(s)
    pos = prior.features(ids[0], s.user)[0]
    return np.array([abs(pos - prior.features(i, s.user)[0]) for i in ids[1:]])


def slice_threshold(prior: ItemPrior, samples: list[Sample], quantile: float = SLICE_QUANTILE) -> float:
    """The quantile of |Δ smoothed mean| over the samples' comparisons: the slice's bound."""
    return float(np.quantile(np.concatenate([mean_gaps(prior, s) for s in samples]), quantile))


def matched_rows(rows: list[dict], samples: list[Sample], prior: ItemPrior, threshold: float) -> list[dict]:
    """Per-sample pairwise rows cut to the comparisons with |Δ smoothed mean| ≤ threshold (rows left empty are
    dropped; rows of samples not in `samples` too)."""
    by_id = {s.id: s for s in samples}
    out = []
    for r in rows:
        s = by_id.get(r.get("id"))
        if s is None:
            continue
        keep = mean_gaps(prior, s) <= threshold
        first, second = (np.atleast_1d(np.asarray(r[k], float)) for k in ("s_first", "s_second"))
        if keep.any():
            out.append({**r, "s_first": first[keep].tolist(), "s_second": second[keep].tolist()})
    return out


def prior_of(samples_source: str | Path) -> tuple[ItemPrior, list[Sample]]:
    """(the item prior of the prepared folder, its test samples) for a run's config.samples: the folder itself or
    a samples file in it."""
    src = Path(samples_source)
    folder = src if src.is_dir() else src.parent
    prep = load_prepared(folder, require_train=False)
    return item_prior(prep), (prep.test if src.is_dir() else read_split(src))
