"""The experiment grid runner on a tiny model and a tiny MovieLens-100K: cells, skipping, report."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_lm
from test_data_prepare import write_tiny_ml100k

from prefrec.errors import UserError
from prefrec.experiment import cells, load_experiment, run_experiment


def _config(tmp_path, tiny_dir, src, methods, **extra):
    cfg = {
        "name": "tiny",
        "datasets": [{"label": "tiny-ml", "dataset": "ml-100k", "source": str(src), "task": "pairwise",
                      "prepare": {"n_train": 4, "n_valid": 2, "n_test": 4, "min_history": 3}}],
        "methods": methods,
        "models": [str(tiny_dir)],
        "ks": [2],
        "seeds": [0],
        "regimes": ["full"],
        "train": {"progress": False},
        "sft": {"epochs": 1, "batch_size": 2, "lr": 1.0e-3},
        "align": {"epochs": 1, "batch_size": 2, "lr": 1.0e-3},
        "eval": {"progress": False},
        "baseline": {"epochs": 1, "progress": False},
        "output_dir": str(tmp_path / "exp"),
        "report_dir": str(tmp_path / "report"),
        **extra,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_setup(tmp_path, embedded_tokenizer):
    tiny_dir = tmp_path / "tiny-model"
    make_tiny_lm(embedded_tokenizer).save_pretrained(tiny_dir)
    embedded_tokenizer.save_pretrained(tiny_dir)
    src = write_tiny_ml100k(tmp_path / "ml", n_users=24, n_items=50)
    return tiny_dir, src


def test_grid_runs_every_cell_once_and_reports(tmp_path, tiny_setup):
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["zero-shot", "dmpo", "popularity"])
    md = run_experiment(path)
    cfg = load_experiment(path)
    grid = cells(cfg)
    assert [c.folder() for c in grid] == ["tiny-ml/zero-shot-model-tiny-model-seed0",
                                         "tiny-ml/dmpo-model-tiny-model-k2-beta0.1-seed0",
                                         "tiny-ml/popularity-full-seed0"]
    for c in grid:
        res = json.loads((tmp_path / "exp" / "cells" / c.folder() / "results.json").read_text())
        assert res["method"] == c.method and res["dataset"] == "tiny-ml" and res["seed"] == 0
        assert 0.0 <= res["metrics"]["auc"] <= 1.0
        assert res["git_commit"] is not None or res["versions"]
        # a trained cell is scored with its fp32 adapter folded into the base (model.load_model, merge_adapter)
        assert res["config"].get("adapter") == ("merged" if c.method == "dmpo" else None)
    run = tmp_path / "exp" / "cells" / "tiny-ml" / "dmpo-model-tiny-model-k2-beta0.1-seed0" / "run"
    assert json.loads((run / "run.json").read_text())["stages"] == ["dmpo"]
    sft_run = tmp_path / "exp" / "cells" / "tiny-ml" / "sft-model-tiny-model-seed0" / "run"
    assert json.loads((sft_run / "run.json").read_text())["stages"] == ["sft"]  # shared SFT, trained once
    assert md.exists() and "dmpo" in md.read_text()
    # training curves are named by their cell, and the report links to the copies beside it
    assert "`tiny-ml/dmpo-model-tiny-model-k2-beta0.1-seed0`" in md.read_text()
    assert (tmp_path / "report" / "cells" / "tiny-ml" / "dmpo-model-tiny-model-k2-beta0.1-seed0" / "run"
            / "metrics.jsonl").is_file()
    # a second run finds every cell done and trains nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp" / "cells").rglob("results.json")}
    run_experiment(path)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp" / "cells").rglob("results.json")}
    assert before == after


def test_unknown_method_and_key_are_errors(tmp_path, tiny_setup):
    tiny_dir, src = tiny_setup
    with pytest.raises(UserError, match="methods"):
        load_experiment(_config(tmp_path, tiny_dir, src, ["dmpo", "magic"]))
    with pytest.raises(UserError, match="unknown key"):
        load_experiment(_config(tmp_path, tiny_dir, src, ["dmpo"], colour="blue"))


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    for path in sorted(root.glob("*.yaml")):
        assert cells(load_experiment(path)), path


def test_overrides_reach_nested_keys_and_datasets_by_label(tmp_path, tiny_setup):
    from prefrec.experiment import apply_overrides

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["dmpo"])
    cfg = load_experiment(path, ["seeds=[0, 1]", "eval.limit=3", "align.lr=5e-5",
                                 "datasets.tiny-ml.prepare.n_train=2", "ks=[1, 2]"])
    assert cfg.seeds == [0, 1] and cfg.ks == [1, 2] and cfg.eval["limit"] == 3 and cfg.align["lr"] == 5e-5
    assert cfg.datasets[0].prepare["n_train"] == 2 and cfg.datasets[0].prepare["n_valid"] == 2
    assert len(cells(cfg)) == 4
    raw = yaml.safe_load(path.read_text())
    assert apply_overrides(raw, ["eval.generate=false"])["eval"]["generate"] is False
    assert "generate" not in raw["eval"]  # the input mapping is left alone
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_experiment(path, ["eval.limit"])
    with pytest.raises(UserError, match="no dataset labelled 'nope'"):
        load_experiment(path, ["datasets.nope.prepare.n_train=2"])
    with pytest.raises(UserError, match="unknown key"):
        load_experiment(path, ["colour=blue"])
    with pytest.raises(UserError, match="not a mapping"):
        load_experiment(path, ["seeds.first=1"])


def test_resuming_with_changed_settings_is_refused_and_report_is_self_contained(tmp_path, tiny_setup):
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity"])
    md = run_experiment(path, overrides=["eval.limit=3"])
    report = tmp_path / "report"
    published = report / "cells" / "tiny-ml" / "popularity-full-seed0" / "results.json"
    assert published.is_file() and "cells/tiny-ml/popularity-full-seed0/results.json" in md.read_text()
    info = json.loads((report / "experiment.json").read_text())
    assert info["overrides"] == ["eval.limit=3"] and "--set 'eval.limit=3'" in info["command"]
    assert info["command"] in md.read_text()
    # growing a grid axis is fine; changing what a cell computes is not
    run_experiment(path, overrides=["eval.limit=3", "seeds=[0, 1]"])
    assert (tmp_path / "exp" / "cells" / "tiny-ml" / "popularity-full-seed1" / "results.json").is_file()
    with pytest.raises(UserError, match=r"different settings \(eval\)"):
        run_experiment(path, overrides=["eval.limit=4"])
    with pytest.raises(UserError, match=r"datasets.tiny-ml"):
        run_experiment(path, overrides=["eval.limit=3", "datasets.tiny-ml.prepare.n_test=3"])
    # a dataset with nothing made yet (no cell, no prepared samples) may change: there is nothing to mix
    raw = yaml.safe_load(path.read_text())
    raw["datasets"].append({**raw["datasets"][0], "label": "tiny-two", "prepare": dict(raw["datasets"][0]["prepare"])})
    path.write_text(yaml.safe_dump(raw))
    run_experiment(path, only=["tiny-ml"], overrides=["eval.limit=3"])
    assert not (tmp_path / "exp" / "cells" / "tiny-two").exists()
    run_experiment(path, only=["tiny-ml"], overrides=["eval.limit=3", "datasets.tiny-two.prepare.n_test=3"])
    with pytest.raises(UserError, match=r"datasets.tiny-ml\)"):
        run_experiment(path, only=["tiny-ml"], overrides=["eval.limit=3", "datasets.tiny-ml.prepare.n_test=3"])


def test_dataset_methods_restrict_the_grid(tmp_path, tiny_setup):
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["zero-shot", "dmpo", "sdpo", "popularity"])
    raw = yaml.safe_load(path.read_text())
    cand = {**raw["datasets"][0], "label": "tiny-cand", "task": "candidates", "methods": ["zero-shot", "sdpo"]}
    raw["datasets"][0]["methods"] = ["zero-shot", "dmpo", "popularity"]
    raw["datasets"].append(cand)
    path.write_text(yaml.safe_dump(raw))
    got = {(c.dataset, c.method) for c in cells(load_experiment(path))}
    assert got == {("tiny-ml", "zero-shot"), ("tiny-ml", "dmpo"), ("tiny-ml", "popularity"),
                   ("tiny-cand", "zero-shot"), ("tiny-cand", "sdpo")}
    raw["datasets"][1]["methods"] = ["dpo"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"datasets\[1\]\.methods: \['dpo'\] not in"):
        load_experiment(path)


def test_a_dataset_eval_section_overrides_the_grids_for_its_cells(tmp_path, tiny_setup):
    """A candidates dataset scored without generation (and on fewer samples) beside a pairwise one that keeps the
    grid's `eval:`; an output folder recorded before datasets had `eval` stays usable."""
    from prefrec.experiment import _settings

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["zero-shot", "popularity"])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"].append({**raw["datasets"][0], "label": "tiny-cand", "task": "candidates",
                            "prepare": {**raw["datasets"][0]["prepare"], "n_candidates": 5},
                            "eval": {"generate": False, "limit": 2}})
    raw["eval"] = {"progress": False, "max_new_tokens": 4}
    path.write_text(yaml.safe_dump(raw))
    run_experiment(path)
    cell = tmp_path / "exp" / "cells"
    zs = json.loads((cell / "tiny-cand" / "zero-shot-model-tiny-model-seed0" / "results.json").read_text())
    assert zs["config"]["generate"] is False and zs["config"]["max_new_tokens"] == 4 and zs["n_samples"] == 2
    pop = json.loads((cell / "tiny-cand" / "popularity-full-seed0" / "results.json").read_text())
    assert pop["n_samples"] == 2  # the baselines score the same test samples as the LLM cells
    pw = json.loads((cell / "tiny-ml" / "zero-shot-model-tiny-model-seed0" / "results.json").read_text())
    assert pw["config"]["limit"] is None and pw["n_samples"] == 4
    recorded = _settings(load_experiment(path))["datasets"]
    assert recorded["tiny-cand"]["eval"] == {"generate": False, "limit": 2} and "eval" not in recorded["tiny-ml"]
    raw["datasets"][1]["eval"] = {"genrate": False}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"datasets\[1\]\.eval\.genrate: unknown key"):
        load_experiment(path)


def test_a_dataset_train_section_overrides_the_grids_for_the_cells_that_train_on_it(tmp_path, tiny_setup):
    """A candidates dataset picks its checkpoint by rank_mrr in a grid whose pairwise dataset picks by auc (the
    candidates task has no AUC: the grid's setting alone is refused); recorded in settings only where given."""
    from prefrec.experiment import _settings

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["sft"])
    raw = yaml.safe_load(path.read_text())
    raw["train"] = {"progress": False, "best_metric": "auc", "eval_every": 1, "use_best": True}
    raw["datasets"].append({**raw["datasets"][0], "label": "tiny-cand", "task": "candidates",
                            "prepare": {**raw["datasets"][0]["prepare"], "n_candidates": 5},
                            "eval": {"generate": False}, "train": {"best_metric": "rank_mrr"}})
    path.write_text(yaml.safe_dump(raw))
    run_experiment(path, report=False)
    cell = tmp_path / "exp" / "cells"
    best = {label: json.loads((cell / label / "sft-model-tiny-model-seed0" / "run" / "run.json").read_text())["best"]
            for label in ("tiny-ml", "tiny-cand")}
    assert best["tiny-ml"]["metric"] == "auc" and best["tiny-cand"]["metric"] == "rank_mrr"
    recorded = _settings(load_experiment(path))["datasets"]
    assert recorded["tiny-cand"]["train"] == {"best_metric": "rank_mrr"} and "train" not in recorded["tiny-ml"]
    del raw["datasets"][1]["train"]
    raw["output_dir"] = str(tmp_path / "exp2")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="'auc' is not a metric of the candidates task"):
        run_experiment(path, only=["tiny-cand"], report=False)


def test_dataset_ks_and_default_betas(tmp_path, tiny_setup):
    """A dataset's own `ks` replace the grid's for its cells; `betas: [null]` trains each loss with its row's β,
    and results.json records that β."""
    from prefrec.experiment import _beta, _settings

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["sft", "dmpo", "sdpo", "simpo"])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"][0]["methods"] = ["sft", "dmpo", "simpo"]
    raw["datasets"].append({**raw["datasets"][0], "label": "tiny-cand", "task": "candidates",
                            "methods": ["sdpo", "simpo"], "ks": [15]})
    raw["ks"], raw["betas"] = [3], [None]
    path.write_text(yaml.safe_dump(raw))
    grid = cells(load_experiment(path))
    got = {(c.dataset, c.method, c.k, c.beta) for c in grid}
    assert got == {("tiny-ml", "sft", None, None), ("tiny-ml", "dmpo", 3, None), ("tiny-ml", "simpo", 3, None),
                   ("tiny-cand", "sdpo", 15, None), ("tiny-cand", "simpo", 15, None)}
    assert {c.method: _beta(c) for c in grid if c.dataset == "tiny-ml"} == {"sft": None, "dmpo": 0.1, "simpo": 2.0}
    # a dataset's ks is a grid axis, not a setting: an output folder made before it existed stays usable
    assert "ks" not in _settings(load_experiment(path))["datasets"]["tiny-cand"]


def test_only_combines_methods_and_datasets(tmp_path, tiny_setup):
    from prefrec.experiment import select

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["zero-shot", "sft", "popularity"])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"].append({**raw["datasets"][0], "label": "other"})
    path.write_text(yaml.safe_dump(raw))
    grid = cells(load_experiment(path))
    assert {(c.dataset, c.method) for c in select(grid, ["sft", "other"])} == {("other", "sft")}
    assert {c.method for c in select(grid, ["tiny-ml"])} == {"zero-shot", "sft", "popularity"}
    assert {c.dataset for c in select(grid, ["sft", "zero-shot"])} == {"tiny-ml", "other"}
    with pytest.raises(UserError, match="--only 'sdpo': not a method or dataset label"):
        select(grid, ["sdpo"])


def test_dataset_methods_may_grow_between_runs(tmp_path, tiny_setup):
    from prefrec.experiment import _check_settings

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["zero-shot", "sft", "popularity"])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"][0]["methods"] = ["zero-shot"]
    path.write_text(yaml.safe_dump(raw))
    record = tmp_path / "settings.json"
    _check_settings(load_experiment(path), record)
    old = json.loads(record.read_text())
    old["datasets"]["tiny-ml"]["methods"] = ["zero-shot"]  # as written by an earlier prefrec
    record.write_text(json.dumps(old))
    raw["datasets"][0]["methods"] = ["zero-shot", "sft"]
    path.write_text(yaml.safe_dump(raw))
    _check_settings(load_experiment(path), record)  # no error: a grid axis grew
    raw["datasets"][0]["prepare"]["n_train"] = 5
    path.write_text(yaml.safe_dump(raw))
    (tmp_path / "cells" / "tiny-ml" / "zero-shot-seed0").mkdir(parents=True)  # a cell made with the old settings
    with pytest.raises(UserError, match="different settings"):
        _check_settings(load_experiment(path), record)


def test_a_cell_another_runner_holds_is_skipped_not_written_twice(tmp_path, tiny_setup, capsys):
    """Two runners on one output folder (say one per core) must never write the same cell: the second skips it."""
    from prefrec import io

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity", "liked-share"])
    cells_dir = tmp_path / "exp" / "cells" / "tiny-ml"
    with io.exclusive(cells_dir / "popularity-full-seed0", "experiment cell"):  # held by a live process (us)
        run_experiment(path, report=False)
    assert "skipped: experiment cell" in capsys.readouterr().err
    assert not (cells_dir / "popularity-full-seed0" / "results.json").exists()
    assert (cells_dir / "liked-share-full-seed0" / "results.json").exists()
    run_experiment(path, report=False)  # released: the next run does it
    assert (cells_dir / "popularity-full-seed0" / "results.json").exists()


def test_an_alignment_cell_borrows_the_reference_of_a_sibling_with_more_negatives(tmp_path, tiny_setup, capsys):
    """DPO (k = 1) after DMPO (k = 2) on the same SFT model and data reads DMPO's reference log-probs, narrowed to
    the first negative; they equal the SFT model's log-probs computed independently, one sequence per response."""
    import torch
    from safetensors import safe_open

    from prefrec.model import load_model
    from prefrec.samples import read_jsonl
    from prefrec.scoring.packing import naive_response_logps
    from prefrec.training.batches import encode_trees

    tiny_dir, src = tiny_setup
    run_experiment(_config(tmp_path, tiny_dir, src, ["dmpo", "dpo"]), report=False)
    cells_dir = tmp_path / "exp" / "cells" / "tiny-ml"
    dmpo_ref = cells_dir / "dmpo-model-tiny-model-k2-beta0.1-seed0" / "run" / "ref_logps.safetensors"
    dpo_run = cells_dir / "dpo-model-tiny-model-k1-beta0.1-seed0" / "run"
    assert f"reference log-probs from {dmpo_ref} (first 1 negatives)" in capsys.readouterr().err
    assert json.loads((dpo_run / "run.json").read_text())["stages"] == ["dpo"]
    with safe_open(str(dpo_run / "ref_logps.safetensors"), framework="pt") as f:
        meta = f.metadata()  # still the narrowed file: train() accepted it instead of computing its own
        cached = {s: (f.get_tensor(f"{s}.chosen"), f.get_tensor(f"{s}.rejected")) for s in ("train", "valid")}
    assert meta["narrowed_from"] == str(dmpo_ref) and meta["k"] == "1"
    model, tok = load_model(str(cells_dir / "sft-model-tiny-model-seed0" / "run"), dtype="fp32", device="cpu")
    model.eval()
    for split in ("train", "valid"):
        samples = read_jsonl(tmp_path / "exp" / "data" / "tiny-ml-pairwise-seed0" / f"{split}.jsonl")
        with torch.no_grad():
            scores = naive_response_logps(model, encode_trees(tok, samples, "dpo", 1))
        want = scores.summed.view(len(samples), 2)  # per sample: [chosen, rejected] of comparison 1
        torch.testing.assert_close(cached[split][0][:, 0], want[:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(cached[split][1][:, 0], want[:, 1], atol=1e-4, rtol=0)


def test_narrowing_a_reference_cache_needs_as_many_negatives(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from prefrec.training.reference import narrow_cache

    src = tmp_path / "ref.safetensors"
    save_file({"train.chosen": torch.arange(6.0).view(2, 3), "train.rejected": -torch.arange(6.0).view(2, 3)},
              str(src), metadata={"k": "3", "chosen": "pairs", "train.ids": '["a", "b"]'})
    assert not narrow_cache(src, tmp_path / "k4.safetensors", 4) and not (tmp_path / "k4.safetensors").exists()
    assert not narrow_cache(tmp_path / "missing", tmp_path / "x.safetensors", 1)
    assert narrow_cache(src, tmp_path / "k2.safetensors", 2)
    with safe_open(str(tmp_path / "k2.safetensors"), framework="pt") as f:
        assert f.metadata()["k"] == "2" and f.metadata()["train.ids"] == '["a", "b"]'
        assert f.get_tensor("train.chosen").tolist() == [[0.0, 1.0], [3.0, 4.0]]
        assert f.get_tensor("train.rejected").tolist() == [[-0.0, -1.0], [-3.0, -4.0]]


def test_report_only_runs_nothing_and_reports_the_finished_cells(tmp_path, tiny_setup):
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity", "liked-share"])
    run_experiment(path, report=False, only=["popularity"])
    md = run_experiment(path, report_only=True)
    cells_dir = tmp_path / "exp" / "cells" / "tiny-ml"
    assert not (cells_dir / "liked-share-full-seed0").exists()
    record = json.loads((tmp_path / "report" / "experiment.json").read_text())
    assert record["cells"] == ["tiny-ml/popularity-full-seed0"] and record["command"].endswith("--report-only")
    assert "popularity" in md.read_text()


def test_report_only_into_the_output_folder_itself(tmp_path, tiny_setup):
    """report_dir = output_dir (a committed folder of cells, reported where it lies): nothing to copy, no error."""
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity"])
    run_experiment(path, report=False)
    out = str(tmp_path / "exp")
    md = run_experiment(path, report_only=True, overrides=[f"report_dir={out}"])
    assert md == tmp_path / "exp" / "results.md" and "`cells/tiny-ml/popularity-full-seed0/results.json`" in md.read_text()


def test_cli_no_report_runs_the_cells_and_publishes_them_without_a_report(tmp_path, tiny_setup):
    """--no-report copies the finished cells' small files beside the report (what scripts/cells.sh commits after
    each group) and writes no results.md."""
    from typer.testing import CliRunner

    from prefrec.cli import app

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity"])
    res = CliRunner().invoke(app, ["experiment", str(path), "--no-report"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exp" / "cells" / "tiny-ml" / "popularity-full-seed0" / "results.json").is_file()
    published = tmp_path / "report" / "cells" / "tiny-ml" / "popularity-full-seed0"
    assert (published / "results.json").is_file() and (published / "per_sample.jsonl").is_file()
    assert not (tmp_path / "report" / "results.md").exists() and "report:" not in res.output


def test_a_sibling_reference_is_borrowed_only_for_the_same_model_and_data(tmp_path, monkeypatch):
    """The sibling's config.yaml is read with the typed loader: one written without its defaults (max_valid_samples
    left out = 100) and with absolute paths still matches a cell whose config has the defaults and relative paths;
    other training samples never match."""
    import torch
    from safetensors.torch import save_file

    from prefrec.experiment import _borrow_reference
    from prefrec.training.config import config_from_dict

    data = tmp_path / "data"
    (tmp_path / "sft").mkdir()
    monkeypatch.chdir(tmp_path)
    tc = config_from_dict({"stages": [{"kind": "dpo", "k": 1}], "model": {"name": "sft"},
                           "data": {"dir": "data", "max_train_samples": 8, "max_valid_samples": 100}})

    def sibling(name: str, max_train: int):
        run = tmp_path / "cells" / name / "run"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(
            {"stages": [{"kind": "dmpo", "k": 2}], "model": {"name": str(tmp_path / "sft")},
             "data": {"dir": str(data), "max_train_samples": max_train}}))
        save_file({"train.chosen": torch.zeros(2, 2), "train.rejected": torch.ones(2, 2)},
                  str(run / "ref_logps.safetensors"), metadata={"k": "2", "chosen": "pairs"})
        return run / "ref_logps.safetensors"

    sibling("a-other-shots", 16)
    mine = tmp_path / "cells" / "dpo" / "run"
    _borrow_reference(tmp_path / "cells", mine, tc)
    assert not (mine / "ref_logps.safetensors").exists()
    same = sibling("b-same-shots", 8)
    _borrow_reference(tmp_path / "cells", mine, tc)
    from safetensors import safe_open

    with safe_open(str(mine / "ref_logps.safetensors"), framework="pt") as f:
        assert f.metadata()["narrowed_from"] == str(same) and f.metadata()["k"] == "1"


def test_every_problem_of_an_experiment_config_is_reported_at_once(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("name: e\ndatasets:\n  - {label: a, task: pairwise}\n  - {label: b, dataset: ml-100k, "
                    "methods: [dpo]}\nmethods: [sft, nope]\nks: [x]\neval: {limit: 5, top: 3}\n")
    with pytest.raises(UserError) as e:
        load_experiment(path)
    text = str(e.value)
    assert "ks[0]: expected int" in text  # the types first...
    path.write_text(path.read_text().replace("ks: [x]", "ks: [3]"))
    with pytest.raises(UserError) as e:
        load_experiment(path)
    text = str(e.value)  # ...then every value problem, each with its key path
    for part in ("methods[1]: 'nope' is not one of", "datasets[0]: needs 'dataset'", "datasets[1].methods: ['dpo']",
                 "eval.top: unknown key"):
        assert part in text, text
    assert text.startswith("4 problems in")


def test_a_prepare_key_prepare_does_not_take_is_one_clear_error(tmp_path):
    """Before: `candidates: 20` (for n_candidates) passed the check and stopped the grid at its first candidates
    cell with a TypeError traceback."""
    cfg = {"name": "x", "methods": ["popularity"],
           "datasets": [{"label": "c", "dataset": "ml-100k", "task": "candidates", "prepare": {"candidates": 20}}]}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match=r"datasets\[0\]\.prepare\.candidates: unknown key.*did you mean "
                                        r"'n_candidates'"):
        load_experiment(path)
    cfg["datasets"][0]["prepare"] = {"n_candidates": 20, "n_test": 5}
    path.write_text(yaml.safe_dump(cfg))
    assert load_experiment(path).datasets[0].prepare == {"n_candidates": 20, "n_test": 5}


def test_the_eval_section_takes_evaluates_own_options():
    import inspect

    from prefrec.evaluation.evaluate import evaluate
    from prefrec.experiment import EvalConfig

    params = inspect.signature(evaluate).parameters
    for f in dataclasses.fields(EvalConfig):
        assert f.name in params and params[f.name].default == f.default, f.name


def test_variants_are_a_grid_axis_with_the_sasrec_table_of_the_same_seed(tmp_path):
    """The LLaRA grid's text and hybrid arms: trained cells per variant (folders -var-NAME, their own SFT), the
    "@sasrec" table resolved to the sasrec-full cell of the same dataset and seed, untrained cells once."""
    from prefrec.experiment import Cell, _train_config, _variant

    cfg = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "experiments" / "llara-candidates.yaml",
                          [f"output_dir={tmp_path}", "seeds=[1]"])
    grid = cells(cfg)
    names = {c.folder() for c in grid}
    assert {"ml-100k/sft-var-text-seed1", "ml-100k/sft-var-hybrid-seed1"} <= names, sorted(names)
    assert sum(c.method == "zero-shot" for c in grid) == 2 and all(c.variant is None for c in grid
                                                                   if c.method in ("zero-shot", "sasrec"))
    hybrid = next(c for c in grid if c.method == "sdpo" and c.variant == "hybrid" and c.dataset == "ml-100k")
    assert _variant(cfg, hybrid)["items"]["embeddings"] == str(tmp_path / "cells" / "ml-100k" /
                                                                "sasrec-full-seed1" / "eval")
    tc = _train_config(cfg, hybrid, tmp_path / "data", tmp_path / "run", ["sdpo"], "embedded")
    assert tc.items is not None and tc.items.projector_hidden == 256 and tc.stages[0].kind == "sdpo"
    text = Cell(**{**vars(hybrid), "variant": "text"})
    assert _train_config(cfg, text, tmp_path / "data", tmp_path / "run", ["sdpo"], "embedded").items is None


def test_a_top_n_grid_shares_one_trunk_cache_between_its_cells(tmp_path, tiny_setup):
    """lora.layers in the grid's training config: SFT, DMPO and zero-shot read one cache; the test trees are stored
    once (by the first cell evaluated) and every later cell computes none of them again."""
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["zero-shot", "dmpo"],
                   train={"progress": False, "lora": {"layers": 1}, "trunk_cache_dir": str(tmp_path / "trunk")})
    run_experiment(path)
    root = tmp_path / "exp" / "cells" / "tiny-ml"
    zero = json.loads((root / "zero-shot-model-tiny-model-seed0" / "results.json").read_text())
    dmpo = json.loads((root / "dmpo-model-tiny-model-k2-beta0.1-seed0" / "results.json").read_text())
    zt, dt = zero["config"]["trunk_cache"], dmpo["config"]["trunk_cache"]
    assert zt["folder"] == dt["folder"] and zt["start_layer"] == dt["start_layer"] == 1
    assert zt["built"] == 4 and dt["built"] == 0 and dt["computed_unstored"] == 0
    run_info = json.loads((root / "dmpo-model-tiny-model-k2-beta0.1-seed0" / "run" / "run.json").read_text())
    assert run_info["trunk_cache"]["folder"] == zt["folder"]


def test_committed_cells_count_as_done_when_the_output_folder_is_gone(tmp_path, tiny_setup, capsys):
    """A grid whose output folder was lost (a new session, another machine) continues from the cells committed under
    report_dir, with their wall times; cells made with other settings are run again."""

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity", "liked-share"])
    run_experiment(path, only=["popularity"])
    committed = tmp_path / "report" / "cells" / "tiny-ml" / "popularity-full-seed0" / "results.json"
    stamp = committed.stat().st_mtime_ns
    seconds = json.loads((tmp_path / "report" / "experiment.json").read_text())["seconds"]
    shutil.rmtree(tmp_path / "exp")
    md = run_experiment(path)
    assert not (tmp_path / "exp" / "cells" / "tiny-ml" / "popularity-full-seed0").exists()  # not run again
    assert committed.stat().st_mtime_ns == stamp
    assert "1 cell(s) finished earlier" in capsys.readouterr().err
    record = json.loads((tmp_path / "report" / "experiment.json").read_text())
    assert record["cells"] == ["tiny-ml/popularity-full-seed0", "tiny-ml/liked-share-full-seed0"]
    assert record["seconds"]["tiny-ml/popularity-full-seed0"] == seconds["tiny-ml/popularity-full-seed0"]
    assert "popularity" in md.read_text() and "liked-share" in md.read_text()
    # other settings: the committed cells are not theirs
    shutil.rmtree(tmp_path / "exp")
    run_experiment(path, overrides=["baseline.epochs=2"], only=["popularity"])
    assert (tmp_path / "exp" / "cells" / "tiny-ml" / "popularity-full-seed0" / "results.json").is_file()


def test_a_dataset_label_added_to_the_grid_leaves_the_other_labels_committed_cells_done(tmp_path, tiny_setup):
    """ml1m-curve grew a label (ml-1m-candidates-users): the settings record differed only there, yet every committed
    cell of the other labels counted as not done (the report showed 8 of 77). A label changed in place still does."""

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity"])
    run_experiment(path)
    committed = tmp_path / "report" / "cells" / "tiny-ml" / "popularity-full-seed0" / "results.json"
    stamp = committed.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "exp")
    cfg = yaml.safe_load(path.read_text())
    cfg["datasets"].append({**json.loads(json.dumps(cfg["datasets"][0])), "label": "tiny-ml-more"})
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path)
    assert not (tmp_path / "exp" / "cells" / "tiny-ml" / "popularity-full-seed0").exists()  # not run again
    assert committed.stat().st_mtime_ns == stamp
    assert (tmp_path / "exp" / "cells" / "tiny-ml-more" / "popularity-full-seed0" / "results.json").is_file()
    record = json.loads((tmp_path / "report" / "experiment.json").read_text())
    assert record["cells"] == ["tiny-ml/popularity-full-seed0", "tiny-ml-more/popularity-full-seed0"]
    # the first label's prepare options changed: its committed cell is not this grid's any more
    shutil.rmtree(tmp_path / "exp")
    cfg["datasets"][0]["prepare"]["n_test"] = 3
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path)
    assert (tmp_path / "exp" / "cells" / "tiny-ml" / "popularity-full-seed0" / "results.json").is_file()
    assert not (tmp_path / "exp" / "cells" / "tiny-ml-more" / "popularity-full-seed0").exists()


def test_cells_of_another_seed_run_without_a_report_are_recorded_by_the_next_report(tmp_path, tiny_setup):
    """cells.sh runs each seed with --set seeds=[S] --no-report, then reports the config's own grid (seed 0): the
    seed-1 cells of the output folder must enter experiment.json, or a later session (output folder gone) runs them
    again and their wall times are lost."""

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity"])
    run_experiment(path, overrides=["seeds=[1]"], report=False)
    run_experiment(path, report_only=True)
    record = json.loads((tmp_path / "report" / "experiment.json").read_text())
    assert record["cells"] == ["tiny-ml/popularity-full-seed1"]
    assert record["seconds"]["tiny-ml/popularity-full-seed1"] is not None
    assert (tmp_path / "report" / "cells" / "tiny-ml" / "popularity-full-seed1" / "per_sample.jsonl").is_file()
    shutil.rmtree(tmp_path / "exp")
    run_experiment(path, overrides=["seeds=[1]"], report=False)
    assert not (tmp_path / "exp" / "cells" / "tiny-ml" / "popularity-full-seed1").exists()  # not run again


def test_a_committed_sft_model_retrained_for_an_alignment_cell_must_reproduce(tmp_path, tiny_setup, capsys):

    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["sft", "dpo"])
    run_experiment(path, only=["sft"])
    log = tmp_path / "report" / "cells" / "tiny-ml" / "sft-model-tiny-model-seed0" / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["split"] == "valid" for r in rows)
    shutil.rmtree(tmp_path / "exp")
    run_experiment(path, only=["dpo"])  # retrains SFT from its seed: same figures
    assert "reproduces the committed validation figures" in capsys.readouterr().err
    # a committed figure the retrained model does not reach
    valid = next(r for r in rows if r["split"] == "valid")
    valid["loss"] = valid["loss"] + 0.5
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(tmp_path / "exp")
    shutil.rmtree(tmp_path / "report" / "cells" / "tiny-ml" / "dpo-model-tiny-model-k1-beta0.1-seed0")  # run it again
    with pytest.raises(UserError, match="does not reproduce the committed one.*validation loss"):
        run_experiment(path, only=["dpo"])


def test_report_only_writes_nothing_into_the_output_folder(tmp_path, tiny_setup):
    """--report-only of committed cells into another output_dir wrote settings.json (and made the folder) there."""
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["popularity"])
    run_experiment(path)
    other = tmp_path / "elsewhere"
    md = run_experiment(path, report_only=True, overrides=[f"output_dir={other}"])
    assert "popularity" in md.read_text() and not other.exists()


def test_the_wall_time_line_counts_the_cells_without_a_recorded_time():
    from prefrec.experiment import _wall_time_lines

    listed = ["d/a-seed0", "d/b-seed0", "d/c-seed1"]
    line = _wall_time_lines({"d/a-seed0": 60.0, "d/b-seed0": 120.0, "d/c-seed1": None}, listed)[0]
    assert "3.0 min in all" in line and "1 of the 3 cells have no recorded time" in line
    assert "no recorded time" not in _wall_time_lines({c: 30.0 for c in listed}, listed)[0]
    assert _wall_time_lines({}, listed) == []


@pytest.mark.skipif(not (shutil.which("flock") and shutil.which("git")), reason="scripts/cells.sh needs flock and git")
def test_cells_sh_commits_each_finished_group_and_the_report(tmp_path, tiny_setup):
    """scripts/cells.sh in a git checkout: each method and seed run with --no-report, whose published small files it
    commits, then the report; run again, it finds the cells committed and runs none."""
    import subprocess
    import sys

    tiny_dir, src = tiny_setup
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(Path(__file__).parents[1] / "scripts" / "cells.sh", repo / "scripts" / "cells.sh")
    cfg = yaml.safe_load(_config(tmp_path, tiny_dir, src, ["popularity"]).read_text())
    for key in ("output_dir", "report_dir"):  # cells.sh's own: experiments/<config>, docs/results/<name>
        del cfg[key]
    (repo / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PREFREC": f"{sys.executable} -m prefrec", "PYTHON": sys.executable, "YIELD_S": "0",
           "LOCK": str(tmp_path / "lock"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    git = ["git", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(["bash", "scripts/cells.sh", "tiny.yaml", "popularity", "0 1"], cwd=repo, env=env, check=True,
                   capture_output=True)
    log = subprocess.run(git + ["log", "--format=%s", "--name-only"], capture_output=True, text=True).stdout
    for seed in (0, 1):
        assert f"tiny: popularity seed {seed} finished (#40)" in log
        assert f"docs/results/tiny/cells/tiny-ml/popularity-full-seed{seed}/per_sample.jsonl" in log
    assert "tiny: report after seed 1 (#40)" in log and "docs/results/tiny/results.md" in log
    shutil.rmtree(repo / "experiments")  # a later session: the output folder is gone
    again = subprocess.run(["bash", "scripts/cells.sh", "tiny.yaml", "popularity", "1"], cwd=repo, env=env,
                           check=True, capture_output=True, text=True)
    assert "0 to run" in again.stderr


def test_a_report_keeps_a_committed_cells_files_when_its_output_copy_is_unfinished(tmp_path, tiny_setup):
    """An alignment cell retrains a committed SFT cell's model into the output folder (run/ only, no results); when
    it does not reproduce, the next report copied that run's training log over the committed one, which no longer
    matched the committed results."""
    tiny_dir, src = tiny_setup
    path = _config(tmp_path, tiny_dir, src, ["sft"])
    run_experiment(path)
    cell = Path("tiny-ml") / "sft-model-tiny-model-seed0"
    committed = tmp_path / "report" / "cells" / cell / "run" / "metrics.jsonl"
    before = committed.read_bytes()
    out = tmp_path / "exp" / "cells" / cell
    (out / "results.json").unlink()  # the retrain: a run folder, no results
    (out / "run" / "metrics.jsonl").write_text('{"split": "valid", "stage_step": 1, "loss": 9.0}\n')
    run_experiment(path, report_only=True)
    assert committed.read_bytes() == before
