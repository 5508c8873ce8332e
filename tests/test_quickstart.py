"""The quickstart is one point of the learning curve: same data, training and evaluation settings."""

import json
from pathlib import Path

import torch
import yaml

from prefrec.quickstart import QUICKSTART, SHOTS

CURVE = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "learning-curve.yaml"


def test_quickstart_equals_a_point_of_the_learning_curve():
    curve = yaml.safe_load(CURVE.read_text())
    ds = next(d for d in curve["datasets"] if d["label"] == "ml-100k")
    (qs,) = QUICKSTART["datasets"]
    assert qs["dataset"] == ds["dataset"] and qs["task"] == ds["task"] and qs["prepare"] == ds["prepare"]
    assert SHOTS in curve["shots"] and QUICKSTART["shots"] == [SHOTS]
    assert set(QUICKSTART["methods"]) <= set(ds["methods"])
    for key in ("train", "sft", "align", "ks", "seeds"):
        assert QUICKSTART[key] == curve[key], key
    assert curve["eval"] == {} and QUICKSTART["eval"] == {}  # the whole test split in both


def test_quickstart_precision_reaches_training_and_evaluation(tmp_path):
    from prefrec.quickstart import quickstart_config

    fp32 = quickstart_config(tmp_path, dtype="fp32")
    assert "model" not in fp32["train"] and fp32["eval"] == {}
    assert fp32["train"]["lora"]["dropout"] == 0.0 and QUICKSTART["train"]["lora"]["dropout"] == 0.05
    fp32["train"]["lora"]["dropout"] = 0.05
    assert {k: fp32[k] for k in QUICKSTART} == QUICKSTART | {"eval": {}}  # else the curve's settings
    bf16 = quickstart_config(tmp_path, n_test=5, dtype="bf16")
    assert bf16["train"]["model"] == {"dtype": "bf16"} and bf16["eval"] == {"limit": 5, "dtype": "bf16"}
    assert "model" not in QUICKSTART["train"]  # the module's table is not changed by a call


def test_auto_precision_takes_bf16_only_where_the_cpu_makes_it_fast(monkeypatch):
    import torch

    import prefrec.model
    from prefrec.quickstart import BF16_MIN_SPEEDUP, choose_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for speedup, want in ((6.0, "bf16"), (BF16_MIN_SPEEDUP - 0.1, "fp32"), (0.3, "fp32")):
        monkeypatch.setattr(prefrec.model, "cpu_bf16_speedup", lambda s=speedup: s)
        assert choose_dtype("auto") == want
    assert choose_dtype("fp32") == "fp32" and choose_dtype("bf16") == "bf16"


def test_cpu_bf16_speedup_is_the_bf16_over_fp32_matmul_rate(monkeypatch):
    import prefrec.model
    from prefrec.model import cpu_bf16_speedup

    rates = {torch.bfloat16: 300.0, torch.float32: 120.0}
    monkeypatch.setattr(prefrec.model, "matmul_gflops", lambda dtype, n, repeats: rates[dtype])
    assert cpu_bf16_speedup(n=64, repeats=2) == 2.5


def test_quickstart_model_names_the_grid_s_model(tmp_path):
    from prefrec import io
    from prefrec.experiment import cells, load_experiment
    from prefrec.quickstart import quickstart_config

    assert "models" not in quickstart_config(tmp_path)  # the grid's default, "embedded": cell folders as before
    cfg = quickstart_config(tmp_path, model="gemma3-270m")
    path = tmp_path / "experiment.yaml"
    io.write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    folders = [c.folder() for c in cells(load_experiment(path))]
    assert folders == ["ml-100k/zero-shot-model-gemma3-270m-seed0", "ml-100k/sft-model-gemma3-270m-shots1000-seed0",
                       "ml-100k/prompt-facts-full-seed0"]
    assert {k: v for k, v in cfg.items() if k != "models"} == quickstart_config(tmp_path)


def test_the_smoke_run_is_small_and_says_so(tmp_path):
    from prefrec.quickstart import SMOKE_SHOTS, SMOKE_TEST, quickstart_config

    cfg = quickstart_config(tmp_path, dtype="fp32", smoke=True)
    assert cfg["shots"] == [SMOKE_SHOTS] and cfg["eval"] == {"limit": SMOKE_TEST}
    assert quickstart_config(tmp_path, dtype="fp32", smoke=True, n_test=5)["eval"] == {"limit": 5}
    assert "prompt-facts" in cfg["methods"]  # every report says what the model adds beyond its prompt


def test_the_quickstart_ends_with_its_results_in_plain_words(tmp_path):
    from prefrec.quickstart import results_table

    report = tmp_path / "results.json"
    report.write_text(json.dumps({"groups": [
        {"method": "zero-shot", "n_samples": [702], "metrics": {"auc": {"mean": 0.4941}}},
        {"method": "sft", "n_samples": [702], "metrics": {"auc": {"mean": 0.5642}}},
        {"method": "prompt-facts", "n_samples": [702], "metrics": {"auc": {"mean": 0.7301}}},
        {"method": "sasrec", "n_samples": [], "metrics": {"hr@1": {"mean": 0.1}}}]}))
    lines = results_table(report).splitlines()
    assert lines[0].startswith("Test AUC (0.5 = chance")
    assert lines[1].split()[:3] == ["zero-shot", "0.494", "702"] and "before training" in lines[1]
    assert lines[2].split()[:2] == ["sft", "0.564"] and lines[3].split()[:2] == ["prompt-facts", "0.730"]
    assert len(lines) == 4  # a method without an AUC is left out
