"""prefrec.results: one owner of run folders and results files (issue 17). The writer keeps the layout every
results.json and per_sample.jsonl has always had, byte for byte."""

import ast
import json
import math
from pathlib import Path

from prefrec import results

SRC = Path(__file__).resolve().parents[1] / "src" / "prefrec"

# what evaluate/baselines/experiment wrote before this module (io.write_json; per_sample via io.write_jsonl):
# indent 2, keys in insertion order, non-ASCII kept, NaN as NaN, a final newline
RESULT = {"kind": "eval", "method": "bpr", "dataset": "ml-100k", "task": "pairwise", "split": "test", "seed": 0,
          "metrics": {"auc": 0.75, "n": 3, "ties": float("nan")}, "model": "Amélie", "k": None}
OLD_RESULTS = """{
  "kind": "eval",
  "method": "bpr",
  "dataset": "ml-100k",
  "task": "pairwise",
  "split": "test",
  "seed": 0,
  "metrics": {
    "auc": 0.75,
    "n": 3,
    "ties": NaN
  },
  "model": "Amélie",
  "k": null
}
"""
ROWS = [{"id": "é1", "s_first": [0.5], "s_second": [-1.0]}, {"id": "u2", "s_first": [1e-05], "s_second": [2.0]}]


def test_results_json_keeps_the_old_layout(tmp_path):
    path = results.write_results(tmp_path / "e", RESULT, ROWS)
    assert path == tmp_path / "e" / "results.json"
    assert path.read_text(encoding="utf-8") == OLD_RESULTS
    assert (tmp_path / "e" / "per_sample.jsonl").read_text(encoding="utf-8") == \
        '{"id": "é1", "s_first": [0.5], "s_second": [-1.0]}\n{"id": "u2", "s_first": [1e-05], "s_second": [2.0]}\n'
    results.write_results(tmp_path / "b", RESULT, ROWS, ascii_rows=True)  # the baselines' rows: ASCII-escaped
    assert (tmp_path / "b" / "per_sample.jsonl").read_text().splitlines()[0] == \
        '{"id": "\\u00e91", "s_first": [0.5], "s_second": [-1.0]}'
    found = results.find_results([tmp_path])
    assert [p for p, _ in found] == [(tmp_path / "b" / "results.json").resolve(), path.resolve()]
    assert math.isnan(found[0][1]["metrics"].pop("ties")) and found[0][1]["metrics"] == {"auc": 0.75, "n": 3}
    assert results.read_per_sample(results.per_sample_path(path)) == ROWS


def test_llm_results_keep_their_key_order(tiny_lm, tmp_path):
    from test_evaluate import pairwise_samples

    from prefrec.evaluation import evaluate as ev

    ev.evaluate(tiny_lm, pairwise_samples(), out=tmp_path / "p", progress=False)
    keys = list(json.loads((tmp_path / "p" / "results.json").read_text()))
    assert keys == ["kind", "method", "dataset", "task", "split", "seed", "regime", "k", "shots", "n_samples",
                    "metrics", "model", "base_model", "beta", "warnings", "config", "timing", "git_commit", "versions", "created"]


def test_one_run_folder_check(tmp_path):
    from prefrec import experiment, model

    assert model.is_run_dir is results.is_run_dir
    assert not hasattr(experiment, "_is_complete_run")
    run = tmp_path / "run"
    assert not results.is_run_dir(run)
    results.write_run(run, {"base_model": "embedded"})
    assert not results.is_run_dir(run)  # run.json alone: the adapter is missing
    (run / "adapter").mkdir()
    assert results.is_run_dir(run) and results.read_run(run) == {"base_model": "embedded"}


def test_results_files_are_written_only_by_prefrec_results():
    """No module but results.py names run.json/results.json/per_sample.jsonl in a write or an is_file() test
    (report's own OUT/results.json, "kind": "report", is the report's output, not an evaluation's)."""
    offenders = []
    for p in SRC.rglob("*.py"):
        if p.name == "results.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("run.json", "results.json", "per_sample.jsonl"):
                offenders.append(str(p.relative_to(SRC)))
    assert offenders == ["evaluation/report.py"]


# ---- issue 31: an evaluation folder is whole or says it is not ---------------------------------------------------

def test_an_eval_killed_between_its_two_files_leaves_no_complete_looking_results(tmp_path, monkeypatch):
    import pytest

    from prefrec import io

    first = {**RESULT, "n_samples": 2}
    results.write_results(tmp_path, first, ROWS)
    assert results.has_results(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "write_json", killed)  # the new per_sample.jsonl is in place, results.json not yet
    with pytest.raises(KeyboardInterrupt):
        results.write_results(tmp_path, {**RESULT, "n_samples": 3}, ROWS + [{"id": "u3"}])
    assert not results.has_results(tmp_path)  # the earlier results.json no longer vouches for these rows


def test_read_per_sample_refuses_rows_that_are_not_the_results_n_samples(tmp_path):
    import pytest

    from prefrec.errors import UserError

    results.write_results(tmp_path, {**RESULT, "n_samples": 2}, ROWS)
    assert results.read_per_sample(tmp_path / results.PER_SAMPLE) == ROWS
    path = tmp_path / results.PER_SAMPLE
    path.write_text(path.read_text().splitlines()[0] + "\n")  # truncated
    with pytest.raises(UserError, match=r"per_sample\.jsonl: 1 rows, but .*results\.json says n_samples = 2"):
        results.read_per_sample(path)
    path.write_text("")
    with pytest.raises(UserError, match=r"per_sample\.jsonl: 0 rows, but"):
        results.read_per_sample(path)


def test_a_corrupt_run_json_is_one_clear_error(tmp_path):
    import pytest

    from prefrec.errors import UserError

    (tmp_path / "run.json").write_text('{"base_model": ')
    with pytest.raises(UserError, match=r"run\.json: not valid JSON \(Expecting value at line 1, column 16\)"):
        results.read_run(tmp_path)
