"""prefrec.evaluation.stats: the bootstrap resamples users, not samples."""

import numpy as np

from prefrec.evaluation.stats import comparison_indices, metric_fn, paired_user_bootstrap, resample, user_groups
from prefrec.tasks.metrics import pairwise_metrics


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
    """metric_fn on rows of several comparisons each: the same AUC as pairwise_metrics over the concatenated
    comparisons of the resampled rows (brute force)."""
    rng = np.random.default_rng(4)
    rows = [{"s_first": rng.normal(size=k).tolist(), "s_second": rng.normal(size=k).tolist()}
            for k in rng.integers(1, 4, 40)]
    fn = metric_fn(rows, "auc")
    for _ in range(20):
        idx = rng.integers(0, len(rows), len(rows))
        want = pairwise_metrics(np.concatenate([rows[i]["s_first"] for i in idx]),
                                np.concatenate([rows[i]["s_second"] for i in idx]))["auc"]
        assert fn(idx) == want
    assert metric_fn(rows, "ndcg@10") is None
