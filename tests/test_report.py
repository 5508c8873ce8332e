"""`prefrec report` on synthetic results: statistics checked against scipy/numpy directly, plots created."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from prefrec import tasks
from prefrec.tasks.metrics import pairwise_metrics, ranking_metrics
from prefrec.tasks import pairwise as task_pairwise
from prefrec.evaluation.report import (
    _FLOOR,
    _beyond_lines,
    bootstrap_ci,
    find_results,
    make_report,
    paired_tests,
    summarize,
)


def _write_run(folder, *, method, seed, k=None, shots=None, task="pairwise", dataset="ml-100k", n=60, shift=0.0,
               rng=None):
    """A results.json + per_sample.jsonl whose metrics are computed from the per-sample scores (as evaluate does)."""
    folder.mkdir(parents=True)
    rng = rng or np.random.default_rng(seed)
    rows = []
    if task == "pairwise":
        s1 = rng.normal(size=n) + shift
        s2 = rng.normal(size=n)
        rows = [{"id": f"s{i}", "s_first": [float(a)], "s_second": [float(b)]} for i, (a, b) in enumerate(zip(s1, s2))]
        metrics = pairwise_metrics(s1, s2)
    else:
        sc = rng.normal(size=(n, 20))
        t = rng.integers(0, 20, size=n)
        sc[np.arange(n), t] += shift
        rows = [{"id": f"s{i}", "target_index": int(ti), "rank_scores": row.tolist(), "valid": True,
                 "hit": bool(row.argmax() == ti)} for i, (row, ti) in enumerate(zip(sc, t))]
        metrics = {f"rank_{k_}": v for k_, v in ranking_metrics(sc, t).items()}
        metrics["hr@1"] = float(np.mean([r["hit"] for r in rows]))
        metrics["valid_ratio"] = 1.0
    res = {"kind": "eval", "method": method, "dataset": dataset, "task": task, "split": "test", "seed": seed,
           "regime": "few-shot" if shots else None, "k": k, "shots": shots, "n_samples": n, "metrics": metrics,
           "model": "embedded", "config": {}, "git_commit": None, "versions": {}, "created": f"2026-01-0{seed + 1}"}
    (folder / "results.json").write_text(json.dumps(res))
    with open(folder / "per_sample.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return res


@pytest.fixture
def results_tree(tmp_path):
    root = tmp_path / "runs"
    for seed in range(3):
        _write_run(root / f"zs-{seed}", method="zero-shot", seed=seed)
        _write_run(root / f"dpo-{seed}", method="dpo", seed=seed, k=1, shots=100, shift=0.5)
        for k in (1, 3):
            _write_run(root / f"dmpo-k{k}-{seed}", method="dmpo", seed=seed, k=k, shots=100, shift=0.3 * k)
        _write_run(root / f"dmpo-s50-{seed}", method="dmpo", seed=seed, k=3, shots=50, shift=0.4)
        _write_run(root / f"cand-zs-{seed}", method="zero-shot", seed=seed, task="candidates")
        _write_run(root / f"cand-sdpo-{seed}", method="sdpo", seed=seed, task="candidates", k=3, shots=100,
                   shift=1.0)
    run = root / "train-run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(10):
            f.write(json.dumps({"stage": "sft", "step": step, "loss": 2.0 - 0.1 * step}) + "\n")
        for step in range(10):
            f.write(json.dumps({"stage": "dpo", "step": step, "loss": 0.69 - 0.01 * step,
                                "reward_accuracy": 0.5 + 0.03 * step, "chosen_logp": -20.0 - step}) + "\n")
    return root


def test_summary_mean_std_and_ttest_against_scipy(results_tree):
    results = find_results([results_tree])
    assert len(results) == 3 * 7
    groups, warns = summarize(results)
    assert not warns
    g = {(x["task"], x["label"]): x for x in groups}
    zs, dpo = g[("pairwise", "zero-shot")], g[("pairwise", "dpo k=1 shots=100 few-shot")]
    aucs_zs = [json.loads((results_tree / f"zs-{s}" / "results.json").read_text())["metrics"]["auc"] for s in range(3)]
    aucs_dpo = [json.loads((results_tree / f"dpo-{s}" / "results.json").read_text())["metrics"]["auc"]
                for s in range(3)]
    assert zs["metrics"]["auc"]["mean"] == pytest.approx(np.mean(aucs_zs))
    assert zs["metrics"]["auc"]["std"] == pytest.approx(np.std(aucs_zs, ddof=1))
    assert zs["metrics"]["auc"]["n_seeds"] == 3

    tests = paired_tests(groups)
    t = next(t for t in tests if t["task"] == "pairwise" and t["metric"] == "auc"
             and {t["a"], t["b"]} == {zs["label"], dpo["label"]})
    a, b = (aucs_zs, aucs_dpo) if t["a"] == zs["label"] else (aucs_dpo, aucs_zs)
    want = stats.ttest_rel(a, b)
    assert t["p_ttest"] == pytest.approx(want.pvalue)
    assert t["t"] == pytest.approx(want.statistic)
    assert t["n"] == 3
    # different tasks are never compared
    assert not any(t["task"] == "pairwise" and "sdpo" in (t["a"] + t["b"]) for t in tests)


def test_duplicate_seed_warns(tmp_path):
    _write_run(tmp_path / "a", method="dpo", seed=0)
    _write_run(tmp_path / "b", method="dpo", seed=0)
    groups, warns = summarize(find_results([tmp_path]))
    assert len(groups) == 1 and groups[0]["metrics"]["auc"]["n_seeds"] == 1
    assert warns and "seed 0" in warns[0]
    # the report shows the kept (newer) run once, with its sample count beside the metrics
    md = make_report([tmp_path], tmp_path / "report", n_boot=50).read_text()
    runs_table = md[md.index("Runs (value"):].split("\n\n")[1]
    assert "b/results.json" in runs_table and "a/results.json" not in runs_table
    assert "| seeds | samples |" in md and "| 1 | 60 |" in md


def test_bootstrap_ci_contains_the_value(tmp_path):
    res = _write_run(tmp_path / "r", method="dpo", seed=0, n=200, shift=0.7)
    rows = [json.loads(line) for line in open(tmp_path / "r" / "per_sample.jsonl")]
    ci = bootstrap_ci(rows, n_boot=300, seed=1)
    for m in ("auc", "pairwise_accuracy"):
        assert ci[m]["value"] == pytest.approx(res["metrics"][m])
        assert ci[m]["lo"] < ci[m]["value"] < ci[m]["hi"]
    # a wider sample -> a narrower interval
    res2 = _write_run(tmp_path / "r2", method="dpo", seed=0, n=2000, shift=0.7)
    rows2 = [json.loads(line) for line in open(tmp_path / "r2" / "per_sample.jsonl")]
    ci2 = bootstrap_ci(rows2, ["auc"], n_boot=300, seed=1)
    assert set(ci2) == {"auc"}
    assert ci2["auc"]["hi"] - ci2["auc"]["lo"] < ci["auc"]["hi"] - ci["auc"]["lo"]
    assert res2["metrics"]["auc"] == pytest.approx(ci2["auc"]["value"])


def test_bootstrap_ranking_prefix(tmp_path):
    res = _write_run(tmp_path / "c", method="sdpo", seed=0, task="candidates", n=80, shift=1.5)
    rows = [json.loads(line) for line in open(tmp_path / "c" / "per_sample.jsonl")]
    ci = bootstrap_ci(rows, res["metrics"], n_boot=100)
    assert {"rank_hr@1", "rank_ndcg@10", "rank_mrr", "hr@1", "valid_ratio"} <= set(ci)
    assert ci["rank_mrr"]["value"] == pytest.approx(res["metrics"]["rank_mrr"])


def test_make_report_writes_md_json_and_pngs(results_tree, tmp_path):
    out = tmp_path / "report"
    md = make_report([results_tree], out, n_boot=50)
    text = md.read_text()
    assert "## ml-100k · pairwise" in text and "## ml-100k · candidates" in text
    assert "± " in text and "p (t-test)" in text and "[" in text
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert any(n.startswith("train-") for n in pngs)
    assert any(n.endswith("-vs-k.png") for n in pngs)  # dmpo k=1,3 at shots=100
    assert any(n.endswith("-vs-shots.png") for n in pngs)  # dmpo k=3 at shots 50, 100
    for n in pngs:
        assert (out / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{n}" in text
    summary = json.loads((out / "results.json").read_text())
    assert summary["kind"] == "report" and {"git_commit", "versions", "created"} <= set(summary)
    assert len(summary["runs"]) == 21 and all(r["ci95"] for r in summary["runs"])
    # the report's own results.json is not an evaluation: running again over the same tree finds the same runs
    assert len(find_results([tmp_path])) == 21


def test_make_report_errors(tmp_path):
    from prefrec.errors import UserError

    with pytest.raises(UserError):
        make_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        make_report([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{nope")
    with pytest.raises(UserError, match="results.json"):
        make_report([tmp_path / "bad"], tmp_path / "out")


def test_beta_sweep_gets_a_column_and_a_plot_and_one_k_gets_no_k_plot(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        for beta in (0.1, 1.0, 5.0):
            res = _write_run(root / f"sdpo-b{beta}-{seed}", method="sdpo", seed=seed, k=3, shots=30,
                             task="candidates", shift=beta)
            res["beta"] = beta
            (root / f"sdpo-b{beta}-{seed}" / "results.json").write_text(json.dumps(res))
    out = tmp_path / "report"
    text = make_report([root], out, n_boot=20).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert "| β |" in header
    assert sum(line.startswith("| sdpo | 3 | 30 | ") for line in text.splitlines()) == 3  # one row per β
    assert all(f"| sdpo | 3 | 30 | {b} |" in text for b in ("0.1", "1", "5"))
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert any(n.endswith("-vs-beta.png") for n in pngs)
    assert not any(n.endswith("-vs-k.png") or n.endswith("-vs-shots.png") for n in pngs)  # one k, one shots value


# ---- paired comparison on the same test samples (issue 12) ---------------------------------------------------------

def _pairwise_rows(rng, n, shift):
    """n samples with 3 comparisons each; `shift` moves the positive's ordering score up (a better model)."""
    rows = []
    for i in range(n):
        s1 = rng.normal(size=3) + shift
        rows.append({"id": f"t{i}", "s_first": s1.tolist(), "s_second": rng.normal(size=3).tolist()})
    return rows


def _write_multi_run(d, rng, method, shift, shots=None, model="embedded", seed=0):
    """A run of 40 samples with 3 comparisons each (_pairwise_rows), its metrics computed from its rows."""
    d.mkdir(parents=True)
    rows = _pairwise_rows(rng, 40, shift)
    (d / "per_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s1 = np.concatenate([r["s_first"] for r in rows])
    s2 = np.concatenate([r["s_second"] for r in rows])
    (d / "results.json").write_text(json.dumps({
        "kind": "eval", "dataset": "d", "task": "pairwise", "method": method, "seed": seed, "n_samples": 40,
        "shots": shots, "base_model": model, "metrics": pairwise_metrics(s1, s2)}))


def test_paired_bootstrap_against_an_independent_computation():
    from sklearn.metrics import roc_auc_score

    from prefrec.evaluation.report import paired_bootstrap

    rng = np.random.default_rng(0)
    a, b = _pairwise_rows(rng, 60, 0.8), _pairwise_rows(rng, 60, 0.0)
    b = list(reversed(b)) + [{"id": "only-in-b", "s_first": [0.0], "s_second": [1.0]}]  # joined on id, not order
    got = paired_bootstrap(a, b, "auc", n_boot=200, seed=7)

    def auc(rows, idx):  # the AUC by hand (docs/evaluate.md): p = σ(s_ab − s_ba) for the positive, 1 − p for the negative
        d = np.concatenate([np.subtract(rows[i]["s_first"], rows[i]["s_second"]) for i in idx])
        p = 1 / (1 + np.exp(-d))
        return roc_auc_score(np.r_[np.ones_like(p), np.zeros_like(p)], np.r_[p, 1 - p])

    b_by = {r["id"]: r for r in b}
    b_al = [b_by[r["id"]] for r in a]
    assert got["n"] == 60
    assert got["diff"] == pytest.approx(auc(a, range(60)) - auc(b_al, range(60)), abs=1e-12)
    r = np.random.default_rng(7)
    diffs = []
    for _ in range(200):
        idx = r.integers(0, 60, size=60)
        diffs.append(auc(a, idx) - auc(b_al, idx))
    diffs = np.array(diffs)
    assert got["lo"] == pytest.approx(np.quantile(diffs, 0.025), abs=1e-12)
    assert got["hi"] == pytest.approx(np.quantile(diffs, 0.975), abs=1e-12)
    assert got["p"] == pytest.approx(max(2 * min((diffs <= 0).mean(), (diffs >= 0).mean()), 1 / 200))
    assert got["p"] < 0.05 and got["lo"] > 0
    same = paired_bootstrap(a, a, "auc", n_boot=200)
    assert same["diff"] == 0 and same["p"] == 1.0
    assert paired_bootstrap(a, [{"id": "x", "s_first": [1.0], "s_second": [0.0]}], "auc") is None


def test_report_tests_every_run_against_zero_shot_on_the_same_samples(tmp_path):
    rng = np.random.default_rng(1)
    for method, shift in (("zero-shot", 0.0), ("sft", 1.0)):
        _write_multi_run(tmp_path / "runs" / method, rng, method, shift)
    md = make_report([tmp_path / "runs"], tmp_path / "out", n_boot=100).read_text()
    assert "Against zero-shot on the same test samples" in md
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    (t,) = summary["tests_vs_zero_shot"]
    assert t["label"].startswith("sft") and t["n"] == 40 and t["diff"] > 0


def test_report_tests_each_alignment_run_against_the_sft_run_it_started_from(tmp_path):
    """DMPO at 100 shots is compared with SFT at 100 shots of its seed (not the 30-shot SFT, not zero-shot), on
    their common samples; SFT and zero-shot get no such row. The difference is the AUCs' difference on the files."""
    from prefrec.evaluation.report import paired_bootstrap, read_per_sample

    rng = np.random.default_rng(3)
    for method, shots, shift in (("zero-shot", None, 0.0), ("sft", 30, 0.2), ("sft", 100, 0.5),
                                 ("dmpo", 100, 1.0)):
        _write_multi_run(tmp_path / "runs" / f"{method}-{shots}", rng, method, shift, shots=shots)
    md = make_report([tmp_path / "runs"], tmp_path / "out", n_boot=100).read_text()
    assert "Alignment against the SFT model it started from" in md
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    (t,) = summary["tests_vs_sft"]
    assert "dmpo-100" in t["run"] and "sft-100" in t["against"] and t["n"] == 40
    want = paired_bootstrap(read_per_sample(tmp_path / "runs" / "dmpo-100" / "per_sample.jsonl"),
                            read_per_sample(tmp_path / "runs" / "sft-100" / "per_sample.jsonl"), "auc", n_boot=100)
    assert t["diff"] == pytest.approx(want["diff"]) and t["p"] == pytest.approx(want["p"])
    assert len(summary["tests_vs_zero_shot"]) == 3


def test_report_pools_each_comparison_over_the_seeds_of_its_configuration(tmp_path):
    """DMPO and SFT on three seeds, each seed its own users: the pooled row's per-seed differences are the per-seed
    paired tests', its difference their mean, its CI around it; DPO, on one seed only, gets no pooled row."""
    rng = np.random.default_rng(8)
    for seed in range(3):
        for method, shift in (("zero-shot", 0.0), ("sft", 0.3), ("dmpo", 0.6)):
            _write_multi_run(tmp_path / "runs" / f"{method}-{seed}", rng, method, shift, shots=100, seed=seed)
    _write_multi_run(tmp_path / "runs" / "dpo-0", rng, "dpo", 0.5, shots=100, seed=0)
    md = make_report([tmp_path / "runs"], tmp_path / "out", n_boot=200).read_text()
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    (t,) = summary["pooled_vs_sft"]
    per_seed = sorted(summary["tests_vs_sft"], key=lambda x: str(x["seed"]))
    assert t["label"].startswith("dmpo") and t["seeds"] == [0, 1, 2] and t["n"] == 120
    assert t["diffs"] == pytest.approx([x["diff"] for x in per_seed if x["label"].startswith("dmpo")])
    assert t["diff"] == pytest.approx(np.mean(t["diffs"])) and t["lo"] <= t["diff"] <= t["hi"]
    assert {x["label"].split()[0] for x in summary["pooled_vs_zero_shot"]} == {"sft", "dmpo"}
    assert "pooled over seeds" in md


def test_report_compares_each_run_on_a_second_model_with_the_same_configuration_on_the_first(tmp_path):
    """Two base models, zero-shot and SFT each: the second model's runs are each compared with the embedded model's run
    of the same method and shots (not with its own zero-shot, which the zero-shot table does), on the same samples."""
    from prefrec.evaluation.report import paired_bootstrap, read_per_sample

    rng = np.random.default_rng(5)
    for model, method, shots, shift in (("embedded", "zero-shot", None, 0.0), ("embedded", "sft", 100, 0.3),
                                        ("/models/gemma3-270m", "zero-shot", None, 0.1),
                                        ("/models/gemma3-270m", "sft", 100, 1.0)):
        _write_multi_run(tmp_path / "runs" / f"{Path(model).name}-{method}", rng, method, shift, shots=shots,
                         model=model)
    md = make_report([tmp_path / "runs"], tmp_path / "out", n_boot=100).read_text()
    assert "Against the same configuration on the first base model" in md
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    got = {(Path(t["run"]).parent.name, Path(t["against"]).parent.name): t for t in summary["tests_vs_first_model"]}
    assert set(got) == {("gemma3-270m-zero-shot", "embedded-zero-shot"), ("gemma3-270m-sft", "embedded-sft")}
    want = paired_bootstrap(read_per_sample(tmp_path / "runs" / "gemma3-270m-sft" / "per_sample.jsonl"),
                            read_per_sample(tmp_path / "runs" / "embedded-sft" / "per_sample.jsonl"), "auc", n_boot=100)
    t = got[("gemma3-270m-sft", "embedded-sft")]
    assert t["diff"] == pytest.approx(want["diff"]) and t["p"] == pytest.approx(want["p"]) and t["n"] == 40
    one_model = make_report([tmp_path / "runs" / "embedded-sft", tmp_path / "runs" / "embedded-zero-shot"],
                            tmp_path / "out1", n_boot=100)
    assert json.loads((tmp_path / "out1" / "results.json").read_text())["tests_vs_first_model"] == []
    assert "first base model" not in one_model.read_text()


def test_bootstrap_ci_is_the_percentile_bootstrap_of_the_old_formula(tmp_path):
    """scipy.stats.bootstrap (percentile) gives what the hand-written loop gave for the same resamples: metric on
    rows resampled with replacement, then the 2.5 % and 97.5 % quantiles (numpy's linear interpolation)."""
    import numpy as np

    from prefrec.evaluation.stats import metric_families

    _write_run(tmp_path / "r", method="dpo", seed=0, n=60, shift=0.5)
    rows = [json.loads(line) for line in open(tmp_path / "r" / "per_sample.jsonl")]
    ci = bootstrap_ci(rows, ["auc", "pairwise_accuracy"], n_boot=200, seed=7)
    # the old formula, fed with the resamples scipy draws: one (n_boot, n) block of indices from the same generator
    idx = np.random.default_rng(7).integers(0, len(rows), size=(200, len(rows)))
    (f,) = metric_families(rows)
    for m in ("auc", "pairwise_accuracy"):
        d = np.array([f(i)[m] for i in idx])
        assert ci[m]["lo"] == pytest.approx(np.quantile(d, 0.025), abs=1e-12)
        assert ci[m]["hi"] == pytest.approx(np.quantile(d, 0.975), abs=1e-12)
        assert ci[m]["n_boot"] == 200


def test_paired_bootstrap_draws_the_same_resamples_as_one_draw_per_resample():
    """The resamples are drawn as one (n_boot, n) matrix: the numbers equal those of n_boot separate draws."""
    from prefrec.tasks.metrics import pairwise_metrics as pm
    from prefrec.evaluation.report import paired_bootstrap

    rng = np.random.default_rng(1)
    a, b = _pairwise_rows(rng, 30, 0.5), _pairwise_rows(rng, 30, 0.0)
    got = paired_bootstrap(a, b, "auc", n_boot=50, seed=11)
    draw = np.random.default_rng(11)

    def auc(rows, idx):
        return pm(np.concatenate([rows[i]["s_first"] for i in idx]), np.concatenate([rows[i]["s_second"] for i in idx]))["auc"]

    d = np.array([auc(a, idx) - auc(b, idx) for idx in (draw.integers(0, 30, size=30) for _ in range(50))])
    assert got["lo"] == pytest.approx(np.quantile(d, 0.025), abs=1e-12)
    assert got["hi"] == pytest.approx(np.quantile(d, 0.975), abs=1e-12)


def test_every_llm_run_gets_its_beyond_the_prompts_facts_line(tmp_path):
    """An LLM run whose margin only restates the printed facts is reported as not beyond its prompt; one that knows
    the answers is (the test itself: tests/test_facts.py)."""
    import numpy as np
    from test_data_protocols import synthetic_log

    from prefrec.results import write_results
    from prefrec.samples import write_samples

    built = task_pairwise.build_pairwise(synthetic_log(n_users=80, seed=7), seed=0, negatives=2, item_stats=True, n_train=10,
                             n_valid=5, n_test=None)
    test = built.samples["test"]
    write_samples(tmp_path / "data" / "test.jsonl", test)
    for name, score in (("restating", lambda x, y: x[:, 0]), ("knowing", lambda x, y: 3.0 * y)):
        rows = []
        for s in test:
            x, y = tasks.task("pairwise").facts.features(s)
            m = np.where(y == 1.0, score(x, y), -score(x, y))
            rows.append({"id": s.id, "user": s.user, "s_first": m.tolist(), "s_second": [0.0] * len(m)})
        res = {"kind": "eval", "method": "sft", "dataset": "syn", "task": "pairwise", "split": "test", "seed": 0,
               "shots": 10 if name == "restating" else 20, "n_samples": len(rows),
               "metrics": tasks.task("pairwise").metrics(rows), "config": {"samples": str(tmp_path / "data" / "test.jsonl")}}
        write_results(tmp_path / "evals" / name, res, rows)
    md = make_report([tmp_path / "evals"], tmp_path / "report", n_boot=200).read_text()
    assert "Beyond the prompt's facts" in md and "learnt beyond its prompt?" in md
    got = {b["run"].split("/")[-2]: b for b in json.loads((tmp_path / "report" / "results.json").read_text())["beyond_facts"]}
    assert got["restating"]["beyond"] is False and got["knowing"]["beyond"] is True


def test_every_report_gives_the_floor_and_the_prior_matched_slice(tmp_path):
    """An LLM run that restates the item prior adds to a text-only prompt's facts but not to the floor (both lines
    are kept); one that reads the user adds to both. The slice table has every pairwise run, the item-prior
    baseline included, each with its number of comparisons (the tests themselves: tests/test_prior.py)."""
    from test_prior import _cells, _folder, _log, mixed

    from prefrec.data.prepared import load_prepared
    from prefrec.baselines.run import run_baseline
    from prefrec.evaluation import prior
    from prefrec.results import write_results

    folder = _folder(tmp_path, _log(mixed, n_users=300), negatives=3)
    prep = load_prepared(folder)
    for name, rows in _cells(prep.test, prior.item_prior(prep)).items():
        res = {"kind": "eval", "method": "sft", "dataset": "syn", "task": "pairwise", "split": "test", "seed": 0,
               "shots": 10 if name == "prior" else 20, "n_samples": len(rows),
               "metrics": tasks.task("pairwise").metrics(rows), "config": {"samples": str(folder / "test.jsonl")}}
        write_results(tmp_path / "evals" / name, res, rows)
    run_baseline("item-prior", folder, regime="full", out=tmp_path / "evals" / "item-prior")
    md = make_report([tmp_path / "evals"], tmp_path / "report", n_boot=200).read_text()
    assert "Beyond what it could know without the user" in md and "Prior-matched slice" in md
    got = json.loads((tmp_path / "report" / "results.json").read_text())
    by_run = {key: {b["run"].split("/")[-2]: b for b in got[key]} for key in ("beyond_facts", "beyond_floor",
                                                                            "prior_matched")}
    assert by_run["beyond_facts"]["prior"]["beyond"] and not by_run["beyond_floor"]["prior"]["beyond"]
    assert by_run["beyond_floor"]["user"]["beyond"]
    sliced = by_run["prior_matched"]
    assert set(sliced) == {"prior", "user", "item-prior"}
    assert all(0.2 <= t["share"] <= 0.4 and t["n_comparisons"] > 0 for t in sliced.values())
    assert abs(sliced["prior"]["auc"] - 0.5) < 0.12 and sliced["user"]["lo"] > 0.5


def test_each_variant_is_compared_with_the_experiments_first_one():
    """The experiment's order decides the reference variant (text before hybrid in llara-candidates.yaml), not
    name order, which made `hybrid` the reference; without an order, name order."""
    from prefrec.evaluation.report import _first_variant_of

    base = {"dataset": "d", "task": "candidates", "method": "sft", "seed": 0, "k": None, "shots": None,
            "beta": None, "base_model": "m"}
    text, hybrid = {**base, "variant": "text"}, {**base, "variant": "hybrid"}
    runs = [hybrid, text, {**base, "method": "zero-shot"}]
    assert _first_variant_of(hybrid, runs, order=["text", "hybrid"]) is text
    assert _first_variant_of(text, runs, order=["text", "hybrid"]) is None
    assert _first_variant_of(text, runs) is hybrid  # name order
    assert _first_variant_of({**base, "variant": "hybrid", "seed": 1}, runs, order=["text", "hybrid"]) is None


def test_beyond_table_of_untested_runs_is_one_line():
    """When no run could be tested (samples gone, imported prompts), the report says so in one line instead of a
    table whose every row is dashes; a table with one tested run keeps the untested rows."""
    skipped = [{"label": "sft", "seed": 0, "skipped": "its samples file is gone"},
               {"label": "dpo", "seed": 0, "skipped": "its samples file is gone"}]
    lines = _beyond_lines(skipped, 100, _FLOOR)
    assert lines == ["Beyond what it could know without the user: not tested (its samples file is gone).", ""]
    tested = {"label": "zero-shot", "seed": 0, "metric": "auc", "facts": 0.7, "facts_plus_llm": 0.71, "diff": 0.01,
              "lo": -0.01, "hi": 0.03, "p": 0.3, "beyond": False}
    table = _beyond_lines(skipped + [tested], 100, _FLOOR)
    assert sum(line.startswith("| sft") and "not tested" in line for line in table) == 1
    assert any(line.startswith("| zero-shot") and "| no |" in line for line in table)
