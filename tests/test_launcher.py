"""`prefrec experiment --launcher local`: each unfinished cell as its own submitit job (processes on this machine,
submitit's local executor) gives the results files the sequential run gives; an alignment cell waits for the job
that trains its SFT run; a failed cell is reported in one error, and the next invocation submits it alone, beside
its first attempt's log."""

import json
import operator
import shutil

import pytest
import yaml
from test_experiment import _config, tiny_setup  # noqa: F401

from prefrec.errors import UserError
from prefrec.experiment import run_experiment
from prefrec.launcher import Job, LauncherConfig, run_jobs

DMPO = "tiny-ml/dmpo-model-tiny-model-k2-beta0.1-seed0"
DPO = "tiny-ml/dpo-model-tiny-model-k1-beta0.1-seed0"
POP = "tiny-ml/popularity-full-seed0"
LATER = "later/popularity-full-seed0"


def _same_results(a, b):
    ra, rb = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    assert rb["metrics"] == pytest.approx(ra["metrics"], abs=1e-9)
    assert (b / "per_sample.jsonl").read_text() == (a / "per_sample.jsonl").read_text()


def test_cells_as_local_jobs_give_the_sequential_results(tmp_path, tiny_setup, capsys):
    """dmpo and dpo share an SFT run that is no cell of the grid: the dmpo job trains it, dpo is submitted after
    it; a dataset whose prepared folder is missing fails alone, and succeeds when submitted again."""
    tiny_dir, src = tiny_setup
    (tmp_path / "seq").mkdir()
    seq = _config(tmp_path / "seq", tiny_dir, src, ["dmpo", "dpo", "popularity"])
    run_experiment(seq)
    path = _config(tmp_path, tiny_dir, src, ["dmpo", "dpo", "popularity"],
                   launcher={"max_jobs": 2, "poll_seconds": 0.2, "timeout_min": 20})
    raw = yaml.safe_load(path.read_text())
    raw["datasets"].append({"label": "later", "prepared": str(tmp_path / "later"), "methods": ["popularity"]})
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=rf"1 cell\(s\) failed \({LATER}\).*Run the same command again"):
        run_experiment(path, launcher="local")
    err = capsys.readouterr().err
    assert f"prefrec: {LATER} failed (job " in err and "log: " in err
    cells, jobs = tmp_path / "exp" / "cells", tmp_path / "exp" / "jobs"
    for cell in (DMPO, DPO, POP):
        _same_results(tmp_path / "seq" / "exp" / "cells" / cell, cells / cell)
    # dpo was submitted after the dmpo job had made the SFT run (and its own results)
    assert next((jobs / DPO).glob("*_submitted.pkl")).stat().st_mtime >= (cells / DMPO / "results.json").stat().st_mtime
    assert json.loads((cells / "tiny-ml" / "sft-model-tiny-model-seed0" / "run" / "run.json").read_text())["resumes"] == 0
    # the missing folder appears; the same command submits the failed cell only, and keeps its first log
    shutil.copytree(tmp_path / "exp" / "data" / "tiny-ml-pairwise-seed0", tmp_path / "later")
    md = run_experiment(path, launcher="local")
    assert f"submitted {LATER} as job" in capsys.readouterr().err
    assert len(list((jobs / LATER).glob("*_log.err"))) == 2
    assert all(len(list((jobs / c).glob("*_log.err"))) == 1 for c in (DMPO, DPO, POP))
    assert json.loads((cells / LATER / "results.json").read_text())["dataset"] == "later"
    assert LATER in json.loads((md.parent / "experiment.json").read_text())["cells"]


def test_a_job_waiting_for_a_failed_one_is_not_submitted(tmp_path, capsys):
    jobs = [Job("a", operator.truediv, (1, 0)), Job("b", print, ("b",), after="a"), Job("c", print, ("c",), after="b"),
            Job("d", print, ("d",))]
    failed = run_jobs(jobs, tmp_path, LauncherConfig(poll_seconds=0.1), "local")
    assert failed == ["a", "b", "c"]
    err = capsys.readouterr().err
    assert "prefrec: a failed (job " in err and "ZeroDivisionError: division by zero" in err
    assert "not submitted, since a failed: b, c" in err
    assert not (tmp_path / "b").exists() and (tmp_path / "d").is_dir()


def test_a_launcher_this_machine_cannot_use_is_one_error(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"--launcher 'ray': expected one of \['local', 'slurm'\]"):
        run_experiment(tmp_path / "missing.yaml", launcher="ray")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(UserError, match="--launcher slurm: sbatch is not on PATH"):
        run_experiment(tmp_path / "missing.yaml", launcher="slurm")


def test_cells_wait_for_the_job_that_makes_what_they_start_from(tmp_path):
    """Who waits for whom (no job runs): alignment cells for their sft cell's job, or, without an sft cell in the
    grid, for the first alignment cell needing that SFT run; a hybrid variant's SFT for the SASRec cell whose item
    table it reads; nothing waits for a finished cell."""
    from prefrec.experiment import _cell_jobs, cells, load_experiment

    def after(methods, **extra):
        cfg = load_experiment(_config(tmp_path, tmp_path / "tiny-model", tmp_path / "ml", methods, **extra))
        root = tmp_path / "exp" / "cells"
        return {j.name.split("/")[1].replace("-model-tiny-model", ""): j.after and j.after.split("/")[1]
                .replace("-model-tiny-model", "") for j in _cell_jobs(cfg, cells(cfg), root, root / "log")}

    assert after(["dmpo", "dpo", "popularity"]) == {
        "dmpo-k2-beta0.1-seed0": None, "dpo-k1-beta0.1-seed0": "dmpo-k2-beta0.1-seed0", "popularity-full-seed0": None}
    sft_run = tmp_path / "exp" / "cells" / "tiny-ml" / "sft-model-tiny-model-seed0" / "run"
    (sft_run / "adapter").mkdir(parents=True)
    (sft_run / "run.json").write_text("{}")  # a finished SFT run: the alignment cells start from it at once
    assert set(after(["dmpo", "dpo"]).values()) == {None}
    got = after(["sasrec", "sft", "dmpo"], variants={"text": {}, "hybrid": {"items": {"embeddings": "@sasrec"}}})
    assert got == {"sasrec-full-seed0": None, "sft-var-text-seed0": None,
                   "sft-var-hybrid-seed0": "sasrec-full-seed0",
                   "dmpo-var-text-k2-beta0.1-seed0": "sft-var-text-seed0",
                   "dmpo-var-hybrid-k2-beta0.1-seed0": "sft-var-hybrid-seed0"}
