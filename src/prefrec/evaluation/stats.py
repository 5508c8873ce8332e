"""Resampling statistics over users.

Test samples of one user are not independent: the candidates protocol takes every position of a user's timeline
(1,000 ML-100K test samples come from 127 users), and a user's samples share a history. A bootstrap that resamples
samples then claims more certainty than the data has. Here the unit is the user: each resample draws users with
replacement and takes all their samples (the cluster bootstrap); with one sample per user (the pairwise protocol)
it is the ordinary bootstrap.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def user_groups(users: Sequence[str | None], ids: Sequence[str] | None = None) -> list[np.ndarray]:
    """Row indices per user, in first-seen order; a row without a user is its own group (keyed by its id)."""
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(users):
        key = u if u is not None else f"\0{ids[i] if ids is not None else i}"
        groups.setdefault(key, []).append(i)
    return [np.array(g, dtype=int) for g in groups.values()]


def resample(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Row indices of one cluster resample: len(groups) users drawn with replacement, all rows of each."""
    pick = rng.integers(0, len(groups), size=len(groups))
    return np.concatenate([groups[g] for g in pick])


def paired_user_bootstrap(rows_a: list[dict], rows_b: list[dict], users: Sequence[str | None],
                          metric: Callable[[list[dict]], float | None], *, n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> dict:
    """metric(A) − metric(B) on the same rows (rows_a[i] and rows_b[i] are the same sample, of users[i]), with a
    percentile CI over user resamples (each resample draws the same users for both) and a two-sided p-value,
    2 × the smaller share of resampled differences on either side of 0 (at least 1 / n_boot)."""
    if not (len(rows_a) == len(rows_b) == len(users)):
        raise ValueError("paired rows and users must have the same length")
    groups = user_groups(users)
    rng = np.random.default_rng(seed)
    a, b = metric(rows_a), metric(rows_b)
    diffs = []
    for _ in range(n_boot):
        idx = resample(groups, rng)
        da, db = metric([rows_a[i] for i in idx]), metric([rows_b[i] for i in idx])
        if da is not None and db is not None:
            diffs.append(da - db)
    d = np.array(diffs)
    if a is None or b is None or d.size == 0:
        return {"a": a, "b": b, "diff": None, "lo": None, "hi": None, "p": 1.0, "n_boot": int(d.size)}
    alpha = (1 - level) / 2
    p = min(1.0, max(2 * min(np.mean(d <= 0), np.mean(d >= 0)), 1 / d.size))
    return {"a": float(a), "b": float(b), "diff": float(a - b), "lo": float(np.quantile(d, alpha)),
            "hi": float(np.quantile(d, 1 - alpha)), "p": float(p), "n_boot": int(d.size),
            "n_users": len(groups)}
