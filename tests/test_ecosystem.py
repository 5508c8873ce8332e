"""Issue 16: adapters that load on any machine, model cards, `prefrec export`, CLI conventions.

A short real training run (tiny random Llama, 2 SFT + 2 DMPO steps) under the name "embedded": the table of known
models is pointed at the tiny model's folder, so the run records the embedded model's Hub id exactly as a real one.
"""

import json
import shutil

import pytest
import torch
import yaml
from conftest import save_tiny_model

from prefrec.model import EMBEDDED, KNOWN_MODELS, KnownModel
from prefrec.samples import Comparison, Sample, write_samples
from prefrec.training.config import config_from_dict, resolve_paths

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TITLES = ["Alien", "Heat", "Fargo", "Casino", "Rocky", "Jaws", "Up", "Cars"]


def _sample(i: int) -> Sample:
    g = torch.Generator().manual_seed(i)
    p = [TITLES[j] for j in torch.randperm(len(TITLES), generator=g).tolist()]
    return Sample(id=f"s{i}", task="pairwise", domain="movies", prefix="Seen: " + ", ".join(p[:3]) + ".\n",
                  comparisons=[Comparison(question=f" Rank {p[3]} and {p[4]}.", chosen=f"{p[3]}, {p[4]}",
                                          rejected=[f"{p[4]}, {p[3]}"])], target=p[3], candidates=[p[3], p[4]])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), embedded_tokenizer, seed=1)


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory, tiny_dir):
    """A finished run whose base is 'embedded' (pointed at the tiny model), with a stats.json for the card."""
    from prefrec.training.recipe import train

    root = tmp_path_factory.mktemp("eco")
    data = root / "data"
    write_samples(data / "train.jsonl", [_sample(i) for i in range(4)])
    write_samples(data / "valid.jsonl", [_sample(50 + i) for i in range(2)])
    (data / "stats.json").write_text(json.dumps({"dataset": "ml-100k", "task": "pairwise", "domain": "movies",
                                                 "seed": 0, "protocol": {"name": "DMPO pairwise", "negatives": 1},
                                                 "split_sizes": {"train": 4, "valid": 2, "test": 0}}))
    raw = {"output_dir": str(root / "run"), "seed": 1, "progress": False, "log_with": ["tensorboard"],
           "model": {"name": "embedded"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "data": {"dir": str(data)},
           "stages": [{"kind": "sft", "epochs": 2, "lr": 1e-2, "batch_size": 2},
                      {"kind": "dmpo", "epochs": 1, "lr": 1e-2, "batch_size": 2, "beta": 0.2}]}
    mp = pytest.MonkeyPatch()
    mp.setitem(KNOWN_MODELS, EMBEDDED, KnownModel(HUB_ID, "apache-2.0", "test copy", lambda: tiny_dir))
    try:
        run = train(resolve_paths(config_from_dict(raw, "test")))
        yield run
    finally:
        mp.undo()


def _logits(model, tok):
    ids = tok("Seen: Alien, Heat. Rank Fargo and Jaws.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def test_adapter_records_the_hub_id_and_loads_from_a_copied_folder(embedded_run, tiny_dir, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prefrec.model import load_model

    cfg = json.loads((embedded_run / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == HUB_ID
    assert json.loads((embedded_run / "run.json").read_text())["base_model"] == "embedded"
    for folder in ("adapter", "best", "checkpoints/step-4/adapter"):
        text = (embedded_run / folder / "adapter_config.json").read_text()
        assert str(tiny_dir) not in text and json.loads(text)["base_model_name_or_path"] == HUB_ID
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(embedded_run, copy)
    monkeypatch.setitem(KNOWN_MODELS, EMBEDDED, KnownModel(HUB_ID, "apache-2.0", "test copy", lambda: tiny_dir))
    model, tok = load_model(str(copy), device="cpu", dtype="fp32")
    bare, _ = load_model(str(copy / "adapter"), device="cpu", dtype="fp32")  # Hub id -> prefrec's copy
    # plain transformers + peft, as on a machine that has the base under its Hub id
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
                                      str(copy / "adapter")).eval()
    ref = _logits(plain, tok)
    torch.testing.assert_close(_logits(model, tok), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(bare, tok), ref, atol=1e-5, rtol=0)


def test_model_card_is_filled_in_hub_format(embedded_run):
    for folder in (embedded_run, embedded_run / "adapter"):
        text = (folder / "README.md").read_text()
        assert text.startswith("---\n") and "More Information Needed" not in text
        front = yaml.safe_load(text.split("---\n")[1])
        assert front["base_model"] == HUB_ID and front["library_name"] == "peft"
        assert front["license"] == "apache-2.0" and front["datasets"] == ["ml-100k"]
        assert {"prefrec", "sft", "dmpo", "pairwise"} <= set(front["tags"])
    body = (embedded_run / "README.md").read_text()
    assert "| dmpo | 1 | 0.2 |" in body  # stage table: k, β
    assert "valid (dmpo)" in body and "reward_accuracy" in body  # validation metrics from run.json
    assert "GroupLens" in body and "DMPO pairwise" in body and "test copy" in body
    assert "Rank" not in body.split("## Prompt format")[0] and "```text" in body


def test_card_lists_test_metrics_after_eval(embedded_run, tmp_path):
    from prefrec.card import model_card
    from prefrec.io import write_json

    run = tmp_path / "run"
    shutil.copytree(embedded_run, run)
    write_json(run / "eval" / "ml-100k-pairwise-test" / "results.json",
                      {"kind": "eval", "dataset": "ml-100k", "task": "pairwise", "split": "test", "n_samples": 7,
                       "metrics": {"auc": 0.61234, "pairwise_accuracy": 0.5}})
    text = model_card(run)
    assert "ml-100k pairwise test (n=7)" in text and "0.6123" in text


def test_export_is_a_plain_transformers_model_with_the_adapters_logits(embedded_run, tiny_dir, tmp_path,
                                                                      monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefrec.errors import UserError
    from prefrec.export import export_run
    from prefrec.model import load_model

    monkeypatch.setitem(KNOWN_MODELS, EMBEDDED, KnownModel(HUB_ID, "apache-2.0", "test copy", lambda: tiny_dir))
    out = export_run(embedded_run, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    adapter, _ = load_model(str(embedded_run), device="cpu", dtype="fp32")
    torch.testing.assert_close(_logits(merged, tok), _logits(adapter, tok), atol=1e-5, rtol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert (_logits(base, tok) - _logits(merged, tok)).abs().max() > 1e-4  # the adapter did change the model
    assert yaml.safe_load((out / "README.md").read_text().split("---\n")[1])["library_name"] == "transformers"
    with pytest.raises(UserError, match="not empty"):
        export_run(embedded_run, out)
    with pytest.raises(UserError, match="not a finished prefrec run"):
        export_run(tmp_path, tmp_path / "x")


def test_tensorboard_through_accelerate_has_the_metrics_jsonl_numbers(embedded_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [json.loads(line) for line in (embedded_run / "metrics.jsonl").read_text().splitlines()]
    logdir = embedded_run / "logs" / "prefrec"
    assert list(logdir.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    want = {r["step"]: r["loss"] for r in rows if r["split"] == "train"}
    assert loss.keys() == want.keys() and len(want) == 6  # 4 SFT + 2 DMPO steps
    for step, v in want.items():
        assert loss[step] == pytest.approx(v, rel=1e-6)
    assert "valid/reward_accuracy" in acc.Tags()["scalars"]


def test_trackers_are_checked_before_training(tmp_path, monkeypatch):
    import accelerate.utils

    from prefrec.errors import UserError
    from prefrec.training.runfolder import tracker_names

    raw = {"output_dir": str(tmp_path / "r"), "data": {"dir": str(tmp_path)}, "stages": [{"kind": "sft"}]}
    with pytest.raises(UserError, match=r"log_with\[0\]: expected one of \['tensorboard', 'wandb', 'mlflow'\]"):
        config_from_dict({**raw, "log_with": ["neptune"]}, "cfg.yaml")
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    cfg = config_from_dict({**raw, "log_with": ["wandb"], "tensorboard": True}, "cfg.yaml")
    with pytest.raises(UserError, match=r"\['wandb'\] not installed; pip install 'prefrec\[wandb\]'"):
        tracker_names(cfg)
    assert tracker_names(config_from_dict({**raw, "tensorboard": True}, "cfg.yaml")) == ["tensorboard"]


# ---- command line conventions --------------------------------------------------------------------------------

def test_cli_version_short_help_and_natural_flags():
    from typer.testing import CliRunner

    from prefrec.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("prefrec ")
    for args in (["-h"], ["train", "-h"], ["data", "fetch", "-h"], ["export", "-h"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0 and "Usage:" in r.output, args
        assert "<bool>" not in r.output, args
    assert "--resume / --no-resume" in CliRunner().invoke(app, ["train", "-h"]).output
    assert "--force / --no-force" in CliRunner().invoke(app, ["data", "fetch", "-h"]).output


def test_cli_eval_prints_a_table_or_json_and_refreshes_the_card(embedded_run, tiny_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from prefrec.cli import app

    monkeypatch.setitem(KNOWN_MODELS, EMBEDDED, KnownModel(HUB_ID, "apache-2.0", "test copy", lambda: tiny_dir))
    run = tmp_path / "run"
    shutil.copytree(embedded_run, run)
    data = tmp_path / "data"
    write_samples(data / "test.jsonl", [_sample(200 + i) for i in range(3)])
    (data / "stats.json").write_text(json.dumps({"dataset": "hand", "task": "pairwise", "seed": 0}))
    r = CliRunner().invoke(app, ["eval", str(run), "--samples", str(data), "--no-generate"])
    assert r.exit_code == 0, r.output
    header, row = r.stdout.strip().splitlines()  # stdout: the table only (progress bars go to stderr)
    assert header.split()[:5] == ["method", "dataset", "task", "n", "auc"] and header.split()[-1] == "results"
    assert row.split()[:4] == ["dmpo", "hand", "pairwise", "3"] and row.endswith("results.json")
    assert "hand pairwise test (n=3)" in (run / "README.md").read_text()  # the card now lists the test metrics
    r = CliRunner().invoke(app, ["eval", str(run), "--samples", str(data), "--json", "--out", str(tmp_path / "e2")])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    saved = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert got["auc"] == saved["metrics"]["auc"] and got["results"] == str(tmp_path / "e2" / "results.json")


def test_cli_export(embedded_run, tiny_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from prefrec.cli import app

    monkeypatch.setitem(KNOWN_MODELS, EMBEDDED, KnownModel(HUB_ID, "apache-2.0", "test copy", lambda: tiny_dir))
    r = CliRunner().invoke(app, ["export", str(embedded_run), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "config.json").is_file()
    r = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "n")])
    assert r.exit_code == 2 and "not a finished prefrec run" in r.output


def test_progress_bars_stay_out_of_log_files(tiny_dir, tmp_path, capfd):
    """progress: true, but stderr is not a terminal (pytest captures it, as a log file would): no bar updates, the
    plain loss and validation lines instead (logging_steps)."""
    from prefrec.training.recipe import train

    data = tmp_path / "data"
    write_samples(data / "train.jsonl", [_sample(i) for i in range(2)])
    write_samples(data / "valid.jsonl", [_sample(50)])
    raw = {"output_dir": str(tmp_path / "run"), "progress": True, "model": {"name": str(tiny_dir)},
           "data": {"dir": str(data)}, "stages": [{"kind": "sft", "batch_size": 2}]}
    train(resolve_paths(config_from_dict(raw, "test")))
    err = capfd.readouterr().err
    assert "sft:" not in err and "%|" not in err and "\r" not in err  # tqdm's desc, bar and carriage returns
    assert "prefrec: sft step 1/1 loss " in err and "prefrec: sft step 1/1 validation (1 samples)" in err


def test_cli_slows_progress_bars_when_stderr_is_a_log(monkeypatch):
    """Commands whose bars prefrec does not switch off (evaluate, packing) update at most once a minute in a log:
    the CLI sets tqdm's TQDM_MININTERVAL default before tqdm is first imported (in a real CLI process)."""
    import os
    import subprocess
    import sys

    from typer.testing import CliRunner

    from prefrec.cli import app

    monkeypatch.setenv("TQDM_MININTERVAL", "1")
    monkeypatch.delenv("TQDM_MININTERVAL")
    CliRunner().invoke(app, ["data", "stats", "/nonexistent"])  # stderr is not a terminal here
    assert os.environ.get("TQDM_MININTERVAL") == "60"
    code = ("import sys; sys.argv = ['prefrec', 'data', 'stats', '/nonexistent']\n"
            "from prefrec.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "import tqdm; print(tqdm.tqdm(range(1), file=sys.stdout).mininterval)")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_MININTERVAL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip().endswith("60.0"), out.stderr[-500:]
