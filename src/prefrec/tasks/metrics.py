"""Evaluation metrics shared by LLM evaluation and the traditional baselines (docs/evaluate.md).

Every function takes plain score arrays and returns a dict of floats plus "n", so an LLM scored by log-probabilities
and a baseline scored by item embeddings go through the very same code. Undefined values (an AUC with one class
only) are returned as None, because JSON has no NaN.

Tie conventions, chosen so a constant scorer gets chance-level numbers and never credit for a tie:
- pairwise accuracy: a tie (s_first == s_second) counts as not correct; the AUC gives it 0.5 as usual.
- ranking: each metric is its expectation over a uniformly random order of the candidates tied with the target, so
  the target's expected rank counts each tied candidate as half ahead (the convention of scikit-learn's
  `ndcg_score`, McSherry & Najork 2008).
- yes/no accuracy: "Yes" is predicted when p_yes > 0.5; p_yes == 0.5 counts as not correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

from prefrec.scoring.matching import match_answer


def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1) if np.ndim(x) else np.asarray([x], dtype=np.float64)
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC of 0/1 labels, as the Mann-Whitney statistic on average ranks: (sum of the positives' ranks −
    n₊(n₊+1)/2) / (n₊ n₋), a tie counting one half, which is what sklearn's roc_auc_score returns. In closed form
    because a report's bootstrap calls it about 10^5 times and sklearn's input checks were half of the report's time
    (py-spy); ranks also take ±inf scores, which roc_auc_score rejects. None without both classes."""
    pos = np.asarray(labels).reshape(-1) == 1
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pairwise_metrics(s_first, s_second) -> dict:
    """AUC and pairwise accuracy of the pairwise task (DMPO §5.1; docs/evaluate.md).

    s_first, s_second: (N,) scores of the correct ordering "pos, neg" and of the wrong one "neg, pos" (for an LLM,
    summed log-probabilities logp(y|x)); a baseline that scores items passes the positive's and the negative's score.

        p_i = σ(s_first_i − s_second_i)          the positive item's score; the negative's is 1 − p_i
        AUC = ROC-AUC over the 2N item scores {p_i} (label 1) ∪ {1 − p_i} (label 0), pooled over samples
        pairwise accuracy = mean_i 1[s_first_i > s_second_i]   (ties count as wrong)

    σ is monotone and 1 − σ(d) = σ(−d), so the AUC is computed on the logits {d_i} ∪ {−d_i} instead of the
    probabilities: the same ranking, without float64 saturation making p = 1.0 for every |d| > 37.
    """
    d = _margins(s_first, s_second)
    n = int(d.size)
    if n == 0:
        return {"auc": None, "pairwise_accuracy": None, "n": 0}
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    auc = _auc(labels, np.concatenate([d, -d]))  # on ranks: a single infinite score (d = ±inf) keeps its place
    return {"auc": auc, "pairwise_accuracy": float(np.mean(d > 0)), "n": n}


def _margins(s_first, s_second) -> np.ndarray:
    """d = s_first − s_second, (N,) each; inf − inf (both orderings impossible) is a tie, 0, not an error."""
    s1, s2 = _as_1d(s_first, "s_first"), _as_1d(s_second, "s_second")
    if s1.shape != s2.shape:
        raise ValueError(f"s_first has {s1.size} scores but s_second has {s2.size}")
    with np.errstate(invalid="ignore"):
        d = s1 - s2
    return np.where(np.isnan(d), 0.0, d)


@dataclass(frozen=True)
class PairwiseTerms:
    """pairwise_metrics of any resample of N comparisons, from their margins sorted once (a bootstrap's 10^3
    resamples then cost a weighted count each instead of a sort of 2N scores each).

    A resample is the weights w (how often each comparison is drawn). With d_i in group g(d_i) of the sorted
    distinct values of {d} ∪ {−d}, the AUC is the Mann-Whitney U over the weighted positives {d_i} and negatives
    {−d_j}, a tie counting one half, divided by W² (W = Σ w):

        U = Σ_g P_g (N_<g + ½ N_g),   P_g = Σ_{i: g(d_i) = g} w_i,   N_g = Σ_{j: g(−d_j) = g} w_j,   N_<g = Σ_{h<g} N_h

    With integer weights every sum is an exact integer or half-integer in float64, so the AUC is the exact ratio
    rounded once, bit-identical to pairwise_metrics of the resampled comparisons (tests/test_stats.py)."""

    pos_group: np.ndarray  # (N,) group of d_i
    neg_group: np.ndarray  # (N,) group of −d_i
    n_groups: int
    correct: np.ndarray  # (N,) 1.0 where d_i > 0 (a tie is not correct)

    @classmethod
    def of(cls, s_first, s_second) -> "PairwiseTerms":
        d = _margins(s_first, s_second)
        values, group = np.unique(np.concatenate([d, -d]), return_inverse=True)  # ±inf are values like any other
        return cls(group[: d.size], group[d.size:], values.size, (d > 0).astype(np.float64))

    def metrics(self, weights: np.ndarray) -> dict:
        """pairwise_metrics of the comparisons drawn weights[i] times each (integer counts)."""
        w = np.asarray(weights, dtype=np.float64)
        n = float(w.sum())
        if n == 0:
            return {"auc": None, "pairwise_accuracy": None, "n": 0}
        pos = np.bincount(self.pos_group, weights=w, minlength=self.n_groups)
        neg = np.bincount(self.neg_group, weights=w, minlength=self.n_groups)
        below = np.cumsum(neg) - neg
        auc = float(np.sum(pos * (below + 0.5 * neg)) / (n * n))
        return {"auc": auc, "pairwise_accuracy": float(np.sum(w * self.correct) / n), "n": int(n)}


def target_ranks(scores, target_index) -> tuple[np.ndarray, np.ndarray]:
    """(greater, tied): for each row, how many candidates score strictly higher than the target, and how many
    other candidates score exactly the same. Shapes (N, C), (N,) -> (N,), (N,)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (samples, candidates), got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    t = np.asarray(target_index).reshape(-1)
    if t.size != s.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} rows but target_index has {t.size} entries")
    if t.size and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= s.shape[1]):
        raise ValueError(f"target_index must be integers in [0, {s.shape[1]})")
    tgt = s[np.arange(s.shape[0]), t][:, None]
    greater = (s > tgt).sum(axis=1)
    tied = (s == tgt).sum(axis=1) - 1
    return greater, tied


def hit_rate(k: int) -> Callable[[np.ndarray], np.ndarray]:
    """HR@k: 1 when the target is among the first k."""
    return lambda r: (r <= k).astype(float)


def ndcg(k: int) -> Callable[[np.ndarray], np.ndarray]:
    """NDCG@k with one relevant item: 1/log2(r + 1) within the first k (the ideal DCG is 1)."""
    return lambda r: np.where(r <= k, 1.0 / np.log2(r + 1), 0.0)


def reciprocal_rank(r: np.ndarray) -> np.ndarray:
    """MRR's term: 1/r."""
    return 1.0 / r


# The ranking metrics, one row each: name -> the metric's value for a target at rank r, given an array of every
# possible rank 1..C. ranking_metrics takes each one's expectation over the target's rank (ties included), and every
# user of ranking metrics (LLM evaluation with its rank_/rank_norm_ prefixes, the baselines, the report's bootstrap)
# reads this table, so a new ranking metric is one function + one row (docs/dev/extending.md).
RANKING_METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hr@1": hit_rate(1),
    "hr@5": hit_rate(5),
    "ndcg@5": ndcg(5),
    "ndcg@10": ndcg(10),
    "mrr": reciprocal_rank,
}


def ranking_metrics(scores, target_index) -> dict:
    """HR@1, HR@5, NDCG@5, NDCG@10 and MRR of one target among C candidates (S-DPO/LLaRA candidate task).

    scores: (N, C) higher = better; target_index: (N,) position of the target in each row.
    With g candidates strictly ahead of the target and t tied with it, the target's rank r is uniform on
    {g+1, …, g+t+1} under a random order of the tie, and each metric is its expectation:

        HR@K    = P(r ≤ K)
        NDCG@K  = E[1[r ≤ K] / log2(r + 1)]      (one relevant item, so the ideal DCG is 1)
        MRR     = E[1 / r]

    averaged over the N samples. Without ties, r = g + 1 and these are the usual definitions.
    """
    terms = ranking_terms(scores, target_index)
    n = len(next(iter(terms.values())))
    if n == 0:
        return {**{name: None for name in RANKING_METRICS}, "n": 0}
    return {**{name: float(np.mean(v)) for name, v in terms.items()}, "n": n}


def ranking_terms(scores, target_index) -> dict[str, np.ndarray]:
    """Each ranking metric's per-sample term, (N,) per name: the expectation over the target's rank (ties included,
    ranking_metrics's docstring); a metric is their mean. A bootstrap resamples these instead of re-ranking."""
    greater, tied = target_ranks(scores, target_index)
    C = np.asarray(scores).shape[1]
    r = np.arange(1, C + 1, dtype=np.float64)  # every possible rank
    # weight[i, j] = P(rank of sample i == j + 1): 1/(t+1) on the tied block starting after the g candidates ahead
    lo, hi = greater[:, None], (greater + tied + 1)[:, None]
    w = ((r[None, :] > lo) & (r[None, :] <= hi)) / (tied + 1)[:, None]
    return {name: (w * value(r)[None, :]).sum(axis=1) for name, value in RANKING_METRICS.items()}


def yesno_metrics(p_yes, labels) -> dict:
    """ROC-AUC and accuracy of the yes/no task (TALLRec).

    p_yes: (N,) P(Yes)/(P(Yes)+P(No)) at the answer's first token (or any score where higher = "Yes");
    labels: (N,) 1 if the user liked the item. Accuracy predicts "Yes" when p_yes > 0.5 (0.5 counts as wrong), so
    it is only meaningful for probabilities; the AUC works for any score.
    """
    p = _as_1d(p_yes, "p_yes")
    y = np.asarray(labels).reshape(-1)
    if y.size != p.size:
        raise ValueError(f"p_yes has {p.size} scores but labels has {y.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    n = int(p.size)
    if n == 0:
        return {"auc": None, "accuracy": None, "n": 0}
    y = y.astype(int)
    correct = np.where(y == 1, p > 0.5, p < 0.5)
    return {"auc": _auc(y, p), "accuracy": float(np.mean(correct)), "n": n}


def generation_metrics(answers: Sequence[str], candidates: Sequence[Sequence[str]], targets: Sequence[str]) -> dict:
    """HR@1 and ValidRatio of generated answers (LLaRA / S-DPO candidate task).

    An answer is valid when it names exactly one candidate (`prefrec.scoring.matching.match_answer`: normalised exact match,
    else a unique substring match); HR@1 = mean 1[valid and the named candidate is the target];
    ValidRatio = mean 1[valid]. The target must be one of the candidates (compared as exact strings).
    """
    if not (len(answers) == len(candidates) == len(targets)):
        raise ValueError(f"got {len(answers)} answers, {len(candidates)} candidate lists and {len(targets)} targets")
    valid, hits = [], []
    for i, (a, cands, tgt) in enumerate(zip(answers, candidates, targets)):
        if tgt not in cands:
            raise ValueError(f"sample {i}: target {tgt!r} is not among its candidates")
        j = match_answer(a, cands)
        valid.append(j is not None)
        hits.append(j is not None and cands[j] == tgt)
    return generation_rates(valid, hits)


def generation_rates(valid: Sequence[bool], hits: Sequence[bool]) -> dict:
    """HR@1 and ValidRatio from answers already matched (per answer: did it name one candidate, was it the target);
    evaluate matches each answer once and derives both its per-sample rows and these metrics from that match."""
    n = len(valid)
    if n == 0:
        return {"hr@1": None, "valid_ratio": None, "n": 0}
    return {"hr@1": sum(map(bool, hits)) / n, "valid_ratio": sum(map(bool, valid)) / n, "n": n}
