"""prefrec.api: the jobs as Python functions, on in-memory samples, datasets and folders; the example script that
docs/python.md walks through runs end to end on a tiny model and real ML-100K."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_lm, save_tiny_model
from test_evaluate import pairwise_samples

from prefrec import api
from prefrec.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_samples_of_takes_samples_dicts_datasets_and_paths(tmp_path):
    samples = pairwise_samples()
    rows = [s.to_dict() for s in samples]
    assert api.samples_of(samples) == samples
    assert api.samples_of(rows) == samples
    datasets = pytest.importorskip("datasets")
    assert api.samples_of(datasets.Dataset.from_list(rows)) == samples
    assert api.samples_of(tmp_path) == tmp_path
    with pytest.raises(UserError, match=r"samples\[1\]: expected a Sample or a dict"):
        api.samples_of([rows[0], 7])
    with pytest.raises(UserError, match=r"samples\[0\]"):
        api.samples_of([{"id": "x"}])


def test_evaluate_in_memory_equals_the_folder(tmp_path, embedded_tokenizer):
    from prefrec.samples import write_samples

    pair = (make_tiny_lm(embedded_tokenizer), embedded_tokenizer)
    samples = pairwise_samples()
    write_samples(tmp_path / "data" / "test.jsonl", samples)
    a = api.evaluate(pair, [s.to_dict() for s in samples], out=tmp_path / "a", progress=False)
    b = api.evaluate(pair, tmp_path / "data", out=tmp_path / "b", progress=False)
    assert a["metrics"]["auc"] == b["metrics"]["auc"] and a["n_samples"] == len(samples)


def test_ranker_from_run_ranks_like_the_rank_function(tmp_path, embedded_tokenizer):
    from prefrec.serving.rank import rank

    folder = save_tiny_model(tmp_path / "tiny", embedded_tokenizer)
    r = api.Ranker.from_run(folder, device="cpu")
    hist, cands = ["Heat (1995)", "Fargo (1996)"], ["Babe (1995)", "Casino (1995)", "Rocky (1976)"]
    got = r.rank(hist, cands, top=2)
    assert [x["title"] for x in got] == [x["title"] for x in rank(r.model, r.tokenizer, hist, cands, top=2)]
    assert len(got) == 2 and got[0]["rank"] == 1


def test_train_takes_a_mapping_with_overrides_and_checks_it(tmp_path, embedded_tokenizer):
    from prefrec.samples import write_samples

    folder = save_tiny_model(tmp_path / "tiny", embedded_tokenizer)
    write_samples(tmp_path / "data" / "train.jsonl", pairwise_samples())
    cfg = {"model": {"name": str(folder)}, "data": {"dir": str(tmp_path / "data")}, "output_dir": str(tmp_path / "run"),
           "progress": False, "stages": [{"kind": "sft", "batch_size": 2}]}
    run = api.train(cfg, overrides=["stages[0].lr=1e-3"])
    assert json.loads((run / "run.json").read_text())["stages"] == ["sft"]
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    with pytest.raises(UserError, match="stages\\[0\\].lrr: unknown key"):
        api.train({**cfg, "stages": [{"kind": "sft", "lrr": 1}]})


def test_the_example_script_runs_end_to_end(tmp_path, embedded_tokenizer, shared_data):
    folder = save_tiny_model(tmp_path / "tiny", embedded_tokenizer)
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), "--model", str(folder),
                           "--source", str(shared_data / "ml-100k"), "--train", "8", "--test", "4",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test AUC" in proc.stdout and "1. " in proc.stdout
    assert (tmp_path / "out" / "eval" / "results.json").is_file()
