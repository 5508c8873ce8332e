"""prefrec.evaluation.stats: the bootstrap resamples users, not samples."""

import numpy as np
import pytest

from prefrec.evaluation.stats import (comparison_indices, metric_fn, paired_user_bootstrap, pooled_user_bootstrap,
                                     resample, user_groups)
from prefrec.tasks.metrics import pairwise_metrics, ranking_metrics


def test_groups_and_resamples_keep_a_users_rows_together():
    groups = user_groups(["a", "b", "a", None, None], ids=["1", "2", "3", "4", "5"])
    assert [g.tolist() for g in groups] == [[0, 2], [1], [3], [4]]
    idx = resample(groups, np.random.default_rng(0))
    assert sorted(set(idx.tolist()) & {0, 2}) in ([], [0, 2])  # both or neither of user a's rows


def _mean(rows):
    x = np.array([r["x"] for r in rows])
    return lambda idx: float(np.mean(x[idx]))


def test_duplicating_every_users_rows_leaves_the_interval_unchanged():
    """A sample-level bootstrap narrows its CI when each user's row is copied 10 times (it counts 10x the
    evidence); the user-level one gives the same interval, because the users are the same."""
    rng = np.random.default_rng(1)
    a = [{"x": float(v)} for v in rng.normal(0.2, 1.0, 60)]
    b = [{"x": 0.0} for _ in a]
    users = [f"u{i}" for i in range(60)]
    once = paired_user_bootstrap(_mean(a), _mean(b), users, n_boot=2000, seed=3)
    copies = paired_user_bootstrap(_mean(a * 10), _mean(b * 10), users * 10, n_boot=2000, seed=3)
    width = once["hi"] - once["lo"]
    assert abs((copies["hi"] - copies["lo"]) - width) < 0.15 * width
    naive = paired_user_bootstrap(_mean(a * 10), _mean(b * 10), [f"s{i}" for i in range(600)], n_boot=2000, seed=3)
    assert naive["hi"] - naive["lo"] < 0.5 * width
    assert abs(once["diff"] - copies["diff"]) < 1e-12 and once["n_users"] == 60


def test_comparison_indices_keep_each_samples_comparisons_together_in_resampled_order():
    sizes = np.array([3, 1, 2, 0, 3])
    starts = np.cumsum(sizes) - sizes
    idx = np.array([4, 0, 0, 2, 3, 1])
    want = np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in idx])
    assert comparison_indices(starts, sizes, idx).tolist() == want.tolist()


def test_a_resampled_pairwise_metric_is_the_metric_of_the_resampled_rows():
    """metric_fn on rows of one or several comparisons each (scores sorted once, a resample weighting them): exactly
    pairwise_metrics over the concatenated comparisons of the resampled rows (brute force: a sort per resample),
    with ties, ±inf and inf − inf among the scores, repeated rows, and for every metric."""
    rng = np.random.default_rng(4)
    special = np.array([np.inf, -np.inf, 0.0, 1.0, -1.0])
    for sizes in (rng.integers(1, 4, 40), np.ones(30, dtype=int)):
        rows = [{"s_first": rng.choice(special, k).tolist(), "s_second": rng.choice(special, k).tolist()}
                if i % 3 == 0 else {"s_first": rng.normal(size=k).tolist(), "s_second": rng.normal(size=k).tolist()}
                for i, k in enumerate(sizes)]
        for name in ("auc", "pairwise_accuracy", "n"):
            fn = metric_fn(rows, name)
            for _ in range(20):
                idx = rng.integers(0, len(rows), len(rows))
                want = pairwise_metrics(np.concatenate([rows[i]["s_first"] for i in idx]),
                                        np.concatenate([rows[i]["s_second"] for i in idx]))[name]
                assert fn(idx) == want
            assert fn(np.array([], dtype=int)) == (0 if name == "n" else None)
    assert metric_fn(rows, "ndcg@10") is None


def test_a_resampled_ranking_metric_is_the_metric_of_the_resampled_rows():
    """metric_fn on candidate rows (ranked once, resampled by their per-sample terms): exactly ranking_metrics of the
    resampled rows, ties and repeated rows included, for every metric and score field."""
    rng = np.random.default_rng(5)
    rows = [{"target_index": int(rng.integers(0, 6)), "scores": rng.integers(0, 3, 6).astype(float).tolist(),
             "rank_scores": rng.normal(size=6).tolist()} for _ in range(50)]  # integer scores: many ties
    for field, prefix in (("scores", ""), ("rank_scores", "rank_")):
        for name in ("hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr"):
            fn = metric_fn(rows, prefix + name)
            for _ in range(5):
                idx = rng.integers(0, len(rows), len(rows))
                want = ranking_metrics(np.array([rows[i][field] for i in idx]), [rows[i]["target_index"] for i in idx])
                assert fn(idx) == want[name]
    assert metric_fn(rows, "rank_hr@1")(np.array([], dtype=int)) is None


def test_pooled_bootstrap_against_an_independent_computation():
    """Two seeds, each its own users (the same names on both: they are different people) and several rows per
    user: the mean of the per-seed differences, and the percentiles and p of a bootstrap written out by hand that
    draws users within each seed from the same generator."""
    rng = np.random.default_rng(2)
    seeds = []
    for n_users in (7, 5):
        users = [f"u{i}" for i in rng.integers(0, n_users, 30)]
        seeds.append((rng.normal(0.3, 1, 30), rng.normal(0, 1, 30), users))
    parts = [(lambda idx, a=a: float(np.mean(a[idx])), lambda idx, b=b: float(np.mean(b[idx])), u) for a, b, u in seeds]
    got = pooled_user_bootstrap(parts, n_boot=300, seed=5)

    draw = np.random.default_rng(5)
    by_user = [[np.array([i for i, x in enumerate(u) if x == name]) for name in dict.fromkeys(u)] for _, _, u in seeds]
    boot = []
    for _ in range(300):
        per = []
        for (a, b, _), groups in zip(seeds, by_user):
            idx = np.concatenate([groups[g] for g in draw.integers(0, len(groups), len(groups))])
            per.append(a[idx].mean() - b[idx].mean())
        boot.append(np.mean(per))
    want = [a.mean() - b.mean() for a, b, _ in seeds]
    assert got["diffs"] == pytest.approx(want) and got["diff"] == pytest.approx(np.mean(want))
    assert got["lo"] == pytest.approx(np.quantile(boot, 0.025)) and got["hi"] == pytest.approx(np.quantile(boot, 0.975))
    p = 2 * min(np.mean(np.array(boot) <= 0), np.mean(np.array(boot) >= 0))
    assert got["p"] == pytest.approx(max(p, 1 / 300)) and got["n_users"] == sum(len(g) for g in by_user)


def test_one_part_pooled_is_the_paired_bootstrap():
    rng = np.random.default_rng(3)
    a, b, users = rng.normal(size=40), rng.normal(size=40), [f"u{i % 13}" for i in range(40)]
    fa, fb = (lambda idx: float(a[idx].mean())), (lambda idx: float(b[idx].mean()))
    one = pooled_user_bootstrap([(fa, fb, users)], n_boot=100, seed=1)
    two = paired_user_bootstrap(fa, fb, users, n_boot=100, seed=1)
    assert (one["diff"], one["lo"], one["hi"], one["p"]) == (two["diff"], two["lo"], two["hi"], two["p"])
    assert two["a"] == pytest.approx(a.mean()) and one["a"] == [two["a"]]
