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

from prefrec.tasks.metrics import PairwiseTerms, ranking_terms, yesno_metrics

Family = Callable[[np.ndarray], dict]  # row indices (a resample) -> metrics


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


def paired_user_bootstrap(metric_a: Callable[[np.ndarray], float | None],
                          metric_b: Callable[[np.ndarray], float | None], users: Sequence[str | None], *,
                          n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """metric_a(idx) − metric_b(idx) on the same rows (row i of both is the same sample, of users[i]; idx: row
    indices, all of them or a resample), with a percentile CI over user resamples (each resample draws the same
    users for both) and a two-sided p-value, 2 × the smaller share of resampled differences on either side of 0 (at
    least 1 / n_boot). metric_fn(rows, name) makes such a function of per-sample rows."""
    got = pooled_user_bootstrap([(metric_a, metric_b, users)], n_boot=n_boot, level=level, seed=seed)
    return {**{k: v for k, v in got.items() if k != "diffs"}, "a": got["a"][0], "b": got["b"][0]}


Part = tuple[Callable[[np.ndarray], float | None], Callable[[np.ndarray], float | None], Sequence[str | None]]


def pooled_user_bootstrap(parts: Sequence[Part], *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The mean over independent parts (metric_a, metric_b, users) of metric_a − metric_b, each part paired as in
    paired_user_bootstrap. The parts are the seeds of one comparison, each with its own split and test users: a
    resample draws users within each part (a seed's users never stand in for another's) and averages the per-part
    differences. With three seeds a t-test over seeds has 2 degrees of freedom; this keeps every test user's
    evidence and still resamples users. Returns diff (the mean), diffs and a, b (per part), lo, hi, p, n_boot,
    n_users; diff None when a part's metric is undefined."""
    groups = [user_groups(users) for _, _, users in parts]
    rng = np.random.default_rng(seed)
    full = [(fa(np.arange(len(u))), fb(np.arange(len(u)))) for fa, fb, u in parts]
    draws = []
    for _ in range(n_boot):
        got = [(fa(idx), fb(idx)) for (fa, fb, _), idx in zip(parts, [resample(g, rng) for g in groups])]
        if all(a is not None and b is not None for a, b in got):
            draws.append(np.mean([a - b for a, b in got]))
    d = np.array(draws)
    out = {"a": [a if a is None else float(a) for a, _ in full], "b": [b if b is None else float(b) for _, b in full],
           "n_boot": int(d.size), "n_users": sum(len(g) for g in groups)}
    if any(a is None or b is None for a, b in full) or d.size == 0:
        return {**out, "diff": None, "diffs": None, "lo": None, "hi": None, "p": 1.0}
    alpha = (1 - level) / 2
    per = [float(a - b) for a, b in full]
    p = min(1.0, max(2 * min(np.mean(d <= 0), np.mean(d >= 0)), 1 / d.size))
    return {**out, "diff": float(np.mean(per)), "diffs": per, "lo": float(np.quantile(d, alpha)),
            "hi": float(np.quantile(d, 1 - alpha)), "p": float(p)}


# ---------------------------------------------------------------------------------------------------------------
# Metric families for the bootstrap: each recomputes a group of metrics on a resample of the rows. Read off the
# rows' fields, so rows of any task, LLM or baseline, need no other label

def _as_list(v) -> list[float]:
    return [float(x) for x in v] if isinstance(v, list) else [float(v)]


def _pairwise_family(rows: list[dict]) -> list[Family]:
    """AUC and pairwise accuracy of a resample of rows, each holding one or more comparisons: the comparisons'
    margins sorted once (PairwiseTerms), a resample weighting each by how often its row is drawn."""
    s1 = [np.array(_as_list(r["s_first"])) for r in rows]
    s2 = [np.array(_as_list(r["s_second"])) for r in rows]
    terms = PairwiseTerms.of(np.concatenate(s1), np.concatenate(s2))
    sizes = np.array([a.size for a in s1])
    starts = np.cumsum(sizes) - sizes
    n = int(sizes.sum())

    def resampled(idx: np.ndarray) -> dict:
        flat = idx if n == len(rows) else comparison_indices(starts, sizes, idx)  # one comparison a row: itself
        return terms.metrics(np.bincount(flat, minlength=n))
    return [resampled]


def comparison_indices(starts: np.ndarray, sizes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Flat indices of the comparisons of samples `idx` (in that order, repeats kept), sample i holding sizes[i]
    consecutive comparisons from starts[i]: a sample's comparisons stay together in a resample. Vectorised: a list
    of 3,000 small arrays concatenated per resample was a tenth of a report's time."""
    take = sizes[idx]
    within = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
    return np.repeat(starts[idx], take) + within


def _yesno_family(rows: list[dict]) -> list[Family]:
    p = np.array([float(r["p_yes"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    return [lambda idx: yesno_metrics(p[idx], y[idx])]


def _constrained_family(rows: list[dict]) -> list[Family]:
    valid = np.array([bool(r["valid_constrained"]) for r in rows], dtype=float)
    hit = np.array([bool(r["hit_constrained"]) for r in rows], dtype=float)
    return [lambda idx: {"hr@1_constrained": float(hit[idx].mean()),
                         "valid_ratio_constrained": float(valid[idx].mean())}]


def _generation_family(rows: list[dict]) -> list[Family]:
    valid = np.array([bool(r["valid"]) for r in rows], dtype=float)
    hit = np.array([bool(r["hit"]) for r in rows], dtype=float)
    return [lambda idx: {"hr@1": float(hit[idx].mean()), "valid_ratio": float(valid[idx].mean())}]


def _ranking_family(rows: list[dict]) -> list[Family]:
    """One family per list-valued "*scores" field (scores, rank_scores, rank_norm_scores), named by its prefix."""
    t = np.array([int(r["target_index"]) for r in rows])
    fams = []
    for f in sorted(rows[0]):
        if f.endswith("scores") and isinstance(rows[0][f], list):
            prefix = f[: -len("scores")]
            terms = ranking_terms(np.array([r[f] for r in rows], dtype=float), t)  # ranked once, not per resample
            fams.append(lambda idx, terms=terms, prefix=prefix: _ranking_means(terms, idx, prefix))
    return fams


def _ranking_means(terms: dict[str, np.ndarray], idx: np.ndarray, prefix: str) -> dict:
    """ranking_metrics of the rows idx, from their per-sample terms (the same numbers: a mean of the same terms)."""
    if len(idx) == 0:
        return {**{prefix + k: None for k in terms}, prefix + "n": 0}
    return {**{prefix + k: float(np.mean(v[idx])) for k, v in terms.items()}, prefix + "n": len(idx)}


# (fields a row must have, families built from such rows), in the order the report has always used
FAMILIES: list[tuple[frozenset, Callable[[list[dict]], list[Family]]]] = [
    (frozenset({"s_first", "s_second"}), _pairwise_family),
    (frozenset({"p_yes", "label"}), _yesno_family),
    (frozenset({"valid", "hit"}), _generation_family),
    (frozenset({"valid_constrained", "hit_constrained"}), _constrained_family),
    (frozenset({"target_index"}), _ranking_family),
]


def metric_families(rows: list[dict]) -> list[Family]:
    """fn(indices) -> dict of metrics, for each metric family the per-sample rows support (read from their fields,
    so rows of any task, LLM or baseline, need no other label)."""
    if not rows:
        return []
    fields = set(rows[0])
    return [fam for need, build in FAMILIES if need <= fields for fam in build(rows)]


def metric_fn(rows: list[dict], metric: str) -> Callable[[np.ndarray], float | None] | None:
    """idx -> `metric` on rows[idx] (a resample of row indices), from the first metric family of the rows' fields
    that gives it; None when none does. Indexing arrays built once, rather than a metric over a list of resampled
    row dicts, is what keeps a report's 10^5 bootstrap metrics to seconds."""
    for fam in metric_families(rows):
        if metric in fam(np.arange(min(len(rows), 2))):
            return lambda idx, fam=fam: fam(idx)[metric]
    return None
