"""prefrec.evaluation.stats: the bootstrap resamples users, not samples."""

import numpy as np

from prefrec.evaluation.stats import paired_user_bootstrap, resample, user_groups


def test_groups_and_resamples_keep_a_users_rows_together():
    groups = user_groups(["a", "b", "a", None, None], ids=["1", "2", "3", "4", "5"])
    assert [g.tolist() for g in groups] == [[0, 2], [1], [3], [4]]
    idx = resample(groups, np.random.default_rng(0))
    assert sorted(set(idx.tolist()) & {0, 2}) in ([], [0, 2])  # both or neither of user a's rows


def _mean(rows):
    return float(np.mean([r["x"] for r in rows]))


def test_duplicating_every_users_rows_leaves_the_interval_unchanged():
    """A sample-level bootstrap narrows its CI when each user's row is copied 10 times (it counts 10x the
    evidence); the user-level one gives the same interval, because the users are the same."""
    rng = np.random.default_rng(1)
    a = [{"x": float(v)} for v in rng.normal(0.2, 1.0, 60)]
    b = [{"x": 0.0} for _ in a]
    users = [f"u{i}" for i in range(60)]
    once = paired_user_bootstrap(a, b, users, _mean, n_boot=2000, seed=3)
    copies = paired_user_bootstrap(a * 10, b * 10, users * 10, _mean, n_boot=2000, seed=3)
    width = once["hi"] - once["lo"]
    assert abs((copies["hi"] - copies["lo"]) - width) < 0.15 * width
    naive = paired_user_bootstrap(a * 10, b * 10, [f"s{i}" for i in range(600)], _mean, n_boot=2000, seed=3)
    assert naive["hi"] - naive["lo"] < 0.5 * width
    assert abs(once["diff"] - copies["diff"]) < 1e-12 and once["n_users"] == 60
