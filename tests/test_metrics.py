"""Metrics against scikit-learn and hand computations, ties included."""

import itertools
import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import ndcg_score, roc_auc_score

from prefrec.tasks.metrics import (
    generation_metrics,
    pairwise_metrics,
    ranking_metrics,
    yesno_metrics,
)

# ---- pairwise ----

def test_pairwise_matches_sklearn_on_item_scores():
    rng = np.random.default_rng(0)
    s1, s2 = rng.normal(size=50) * 3, rng.normal(size=50) * 3
    p = expit(s1 - s2)
    want_auc = roc_auc_score(np.r_[np.ones(50), np.zeros(50)], np.r_[p, 1 - p])
    m = pairwise_metrics(s1, s2)
    assert m["auc"] == pytest.approx(want_auc, abs=1e-12)
    assert m["pairwise_accuracy"] == pytest.approx(np.mean(s1 > s2))
    assert m["n"] == 50


def test_pairwise_hand_case_with_tie():
    # d = s1 - s2 = [2, -1, 0]: item scores pos {σ2, σ-1, .5}, neg {σ-2, σ1, .5}
    # pos > neg pairs: σ2 beats all 3; σ-1 beats σ-2 (1); .5 beats σ-2 (1) and ties .5 (0.5) -> 5.5 / 9
    m = pairwise_metrics([2.0, -3.0, 1.0], [0.0, -2.0, 1.0])
    assert m["auc"] == pytest.approx(5.5 / 9)
    assert m["pairwise_accuracy"] == pytest.approx(1 / 3)  # the tie is not correct


def test_pairwise_saturated_differences_keep_their_order():
    # σ(40) == σ(50) == 1.0 in float64; the AUC must still see 50 > 40 > -40 > -50 ordering of the logits
    m = pairwise_metrics([50.0, -40.0], [0.0, 0.0])
    assert m["auc"] == pytest.approx(roc_auc_score([1, 1, 0, 0], [50, -40, -50, 40]))
    assert m["auc"] == pytest.approx(0.75)


def test_pairwise_all_correct_and_errors():
    assert pairwise_metrics([1, 2], [0, 0])["auc"] == 1.0
    assert pairwise_metrics([0, 0], [1, 2])["auc"] == 0.0
    assert pairwise_metrics([], [])["n"] == 0
    with pytest.raises(ValueError):
        pairwise_metrics([1, 2], [1])
    with pytest.raises(ValueError):
        pairwise_metrics([float("nan")], [0])
    # both orderings impossible is a tie, not a crash
    assert pairwise_metrics([-np.inf], [-np.inf])["pairwise_accuracy"] == 0.0


# ---- ranking ----

def _brute_force(scores, t):
    """Expected metric values over all orders of the tied candidates, by enumerating permutations."""
    scores = np.asarray(scores, dtype=float)
    out = {"hr@1": [], "hr@5": [], "ndcg@5": [], "ndcg@10": [], "mrr": []}
    for row, ti in zip(scores, t):
        vals = {k: [] for k in out}
        # rank = position of the target after a stable sort by score with ties broken by a random key order
        for perm in itertools.permutations(range(len(row))):
            order = sorted(range(len(row)), key=lambda j: (-row[j], perm[j]))
            r = order.index(ti) + 1
            vals["hr@1"].append(r <= 1)
            vals["hr@5"].append(r <= 5)
            vals["ndcg@5"].append(1 / math.log2(r + 1) if r <= 5 else 0.0)
            vals["ndcg@10"].append(1 / math.log2(r + 1) if r <= 10 else 0.0)
            vals["mrr"].append(1 / r)
        for k in out:
            out[k].append(np.mean(vals[k]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def test_ranking_no_ties_by_hand():
    scores = [[0.9, 0.1, 0.5, 0.3, 0.2, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    m = ranking_metrics(scores, [2, 0])  # ranks 2 and 7
    assert m["hr@1"] == 0.0
    assert m["hr@5"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 7) / 2)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3)) / 2)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(8)) / 2)
    assert m["n"] == 2


def test_ranking_ties_against_brute_force_and_sklearn():
    scores = np.array([
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # target tied at the top with one other
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: chance level
        [3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0],  # target tied with 4 others straddling the HR@5 cut
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
    ])
    t = np.array([1, 3, 2, 6])
    m = ranking_metrics(scores, t)
    bf = _brute_force(scores, t)
    for k in bf:
        assert m[k] == pytest.approx(bf[k], abs=1e-12), k
    # scikit-learn's ndcg_score averages over tied groups: the same expectation
    rel = np.zeros_like(scores)
    rel[np.arange(len(t)), t] = 1
    for k in (5, 10):
        want = np.mean([ndcg_score(rel[i:i + 1], scores[i:i + 1], k=k) for i in range(len(t))])
        assert m[f"ndcg@{k}"] == pytest.approx(want, abs=1e-12)
    # hand values of row 0: rank 1 or 2 with probability 1/2 each
    m0 = ranking_metrics(scores[:1], t[:1])
    assert m0["hr@1"] == pytest.approx(0.5)
    assert m0["mrr"] == pytest.approx(0.75)


def test_ranking_large_random_matches_sklearn_without_ties():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 20))
    t = rng.integers(0, 20, size=30)
    rel = np.zeros_like(scores)
    rel[np.arange(30), t] = 1
    m = ranking_metrics(scores, t)
    assert m["ndcg@10"] == pytest.approx(ndcg_score(rel, scores, k=10), abs=1e-12)
    ranks = (scores > scores[np.arange(30), t][:, None]).sum(1) + 1
    assert m["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert m["hr@5"] == pytest.approx(np.mean(ranks <= 5))


def test_ranking_bad_input():
    with pytest.raises(ValueError):
        ranking_metrics([[1, 2]], [2])
    with pytest.raises(ValueError):
        ranking_metrics([1, 2], [0])
    with pytest.raises(ValueError):
        ranking_metrics([[1, float("nan")]], [0])


# ---- yes/no ----

def test_yesno_against_sklearn_and_ties():
    p = np.array([0.9, 0.2, 0.5, 0.5, 0.7, 0.1])
    y = np.array([1, 0, 1, 0, 0, 1])
    m = yesno_metrics(p, y)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    # correct: 0.9/1, 0.2/0; 0.5 counts wrong either way; 0.7/0 wrong; 0.1/1 wrong
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert yesno_metrics([0.3, 0.6], [1, 1])["auc"] is None  # one class only: undefined
    assert yesno_metrics([0.3, 0.6], [0, 0])["auc"] is None


@pytest.mark.parametrize("seed", range(20))
def test_the_closed_form_auc_is_sklearns_on_heavily_tied_scores(seed):
    """The rank (Mann-Whitney) form of the AUC gives roc_auc_score's value, ties counting one half."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = rng.integers(0, 4, n) / 4  # four distinct values: most scores tied
    assert yesno_metrics(p, y)["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    d = rng.integers(-2, 3, n).astype(float)
    want = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[d, -d])
    assert pairwise_metrics(d, np.zeros(n))["auc"] == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError):
        yesno_metrics([0.5], [2])


# ---- generation ----

def test_generation_metrics_hand_case():
    cands = ["Star Wars (1977)", "Star Wars: Episode V (1980)", "Fargo (1996)"]
    answers = [
        "Star Wars: Episode V (1980)",  # valid, correct
        "Star Wars",  # ambiguous: invalid
        "Fargo",  # valid, wrong
        "I cannot decide.",  # invalid
    ]
    targets = ["Star Wars: Episode V (1980)", "Star Wars (1977)", "Star Wars (1977)", "Fargo (1996)"]
    m = generation_metrics(answers, [cands] * 4, targets)
    assert m == {"hr@1": 0.25, "valid_ratio": 0.5, "n": 4}
    with pytest.raises(ValueError):
        generation_metrics(["x"], [cands], ["Not a candidate"])


def test_pairwise_infinite_scores_match_sklearn_on_finite_stand_ins():
    """A single ±inf score (an impossible ordering) is handled: the AUC equals scikit-learn's on the same case with
    the infinities replaced by finite values beyond every other score (the AUC depends on the order only)."""
    inf = np.inf
    s1 = np.array([0.0, inf, -1.0, -inf, -2.0, -inf])
    s2 = np.array([1.0, -3.0, -inf, -4.0, -2.0, -inf])  # d = [-1, inf, inf, -inf, 0, tie (inf - inf)]
    m = pairwise_metrics(s1, s2)
    d = np.array([-1.0, 1e9, 1e9, -1e9, 0.0, 0.0])
    want = roc_auc_score(np.r_[np.ones(6), np.zeros(6)], np.r_[d, -d])
    assert m["auc"] == pytest.approx(want, abs=1e-12)
    assert m["pairwise_accuracy"] == pytest.approx(2 / 6)
    assert pairwise_metrics([inf], [0.0])["auc"] == 1.0 and pairwise_metrics([-inf], [0.0])["auc"] == 0.0
