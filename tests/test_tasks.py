"""prefrec.tasks: one table of tasks, one of ranking metrics. A metric added to metrics.RANKING_METRICS appears in LLM
results, baseline results and the report's bootstrap alike (evaluate.py used to list the names by hand)."""

import json

import numpy as np
import pytest

from prefrec import tasks
from prefrec.tasks import metrics
from prefrec.tasks import candidates as task_candidates


def hr3(r):
    """The worked example of docs/dev/extending.md: HR@3."""
    return (r <= 3).astype(float)


@pytest.fixture
def with_hr3(monkeypatch):
    monkeypatch.setattr(metrics, "RANKING_METRICS", {**metrics.RANKING_METRICS, "hr@3": hr3})


def _hr3(scores, target) -> float:
    """Brute force, no ties: the target's rank is 1 + the number of candidates scored above it."""
    scores = np.asarray(scores, dtype=float)
    ahead = (scores > scores[np.arange(len(target)), target][:, None]).sum(axis=1)
    assert not (scores == scores[np.arange(len(target)), target][:, None]).sum(axis=1).max() > 1  # no ties
    return float(np.mean(ahead + 1 <= 3))


def test_every_sample_task_has_a_row():
    assert list(tasks.TASKS) == ["pairwise", "candidates", "yesno"]
    assert all(row.name == name for name, row in tasks.TASKS.items())


def test_a_new_ranking_metric_reaches_llm_results(with_hr3, tiny_lm, tmp_path):
    from test_evaluate import candidate_samples

    from prefrec.evaluation import evaluate as ev

    res = ev.evaluate(tiny_lm, candidate_samples(), out=tmp_path / "c", generate=False, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "c" / "per_sample.jsonl").read_text().splitlines()]
    target = [r["target_index"] for r in rows]
    assert res["metrics"]["rank_hr@3"] == pytest.approx(_hr3([r["rank_scores"] for r in rows], target))
    assert res["metrics"]["rank_norm_hr@3"] == pytest.approx(_hr3([r["rank_norm_scores"] for r in rows], target))
    saved = json.loads((tmp_path / "c" / "results.json").read_text())["metrics"]
    assert "rank_hr@3" in saved and "rank_norm_hr@3" in saved
    # and the report's bootstrap gives it a CI
    from prefrec.evaluation.report import bootstrap_ci

    ci = bootstrap_ci(rows, n_boot=20)
    assert ci["rank_hr@3"]["value"] == pytest.approx(res["metrics"]["rank_hr@3"])


def test_a_new_ranking_metric_reaches_baseline_results(with_hr3, tmp_path):
    from test_baselines import TINY, make_candidates

    from prefrec.data.prepared import load_prepared
    from prefrec.baselines.run import run_baseline

    folder = make_candidates(tmp_path / "cands")
    r = run_baseline("popularity", folder, regime="full", seed=0, out=tmp_path / "out", **TINY)
    test = load_prepared(folder).test
    target = np.array([s.candidate_items.index(s.target_item) for s in test])
    want = metrics.ranking_metrics(r["scores"], target)["hr@3"]  # ties (popularity) as ranking_metrics counts them
    assert r["metrics"]["hr@3"] == want
    assert json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]["hr@3"] == want


def test_ranking_by_size_weighs_each_length_by_its_rows():
    rows = [{"s": [3.0, 1.0, 2.0], "target_index": 0}, {"s": [1.0, 2.0], "target_index": 0},
            {"s": [1.0, 5.0, 0.0], "target_index": 0}]
    got = task_candidates.ranking_by_size(rows, "s", "x_")
    assert got["x_hr@1"] == pytest.approx(1 / 3) and got["x_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert set(got) == {"x_" + k for k in metrics.RANKING_METRICS}


def test_a_new_ranking_metric_is_a_column_of_the_report(with_hr3, tmp_path):
    from test_baselines import TINY, make_candidates

    from prefrec.baselines.run import run_baseline
    from prefrec.evaluation.report import key_metrics, make_report

    assert "rank_hr@3" in key_metrics("candidates") and "hr@3" in key_metrics("candidates")
    folder = make_candidates(tmp_path / "cands")
    run_baseline("popularity", folder, regime="full", seed=0, out=tmp_path / "runs" / "pop", **TINY)
    md = make_report([tmp_path / "runs"], tmp_path / "rep", n_boot=20).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "| hr@3 |" in header
