"""Scaling out (issue #44, docs/scale.md): FSDP2 over 2 CPU processes and a two-"node" launch on the loopback each
train what one process trains.

Independent computation: the same config trained by one plain process (no sharding, no process group) with the
same global batch. Same global batches, so the same losses and LoRA weights up to float summation order; the
tolerance is the DDP test's (1e-5 absolute, tests/test_train.py). LoRA dropout is 0 (each process draws its own
masks). The launches run `accelerate launch` as a user would, from the repository root.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import train_two_processes
from test_train import REPO, _adapter, _assert_same_adapter, _cfg, _raw, _rows, data_dirs, tiny_dir  # noqa: F401

from prefrec.errors import UserError
from prefrec.training.recipe import train
from prefrec.training.runfolder import checkpoints

FSDP = REPO / "configs" / "accelerate" / "fsdp.yaml"


def _pair(tiny_dir, data, tmp_path, **top):
    """(one-process config, two-process config): SFT 2 steps then DMPO k=3 2 steps at a global batch of 4; the two
    processes take 2 samples each in SFT and 1 each x 2 accumulation steps in DMPO."""
    one = _raw(tiny_dir, data, tmp_path / "one", sft_epochs=1, align_epochs=1, dropout=0.0)
    two = _raw(tiny_dir, data, tmp_path / "two", sft_epochs=1, align_epochs=1, dropout=0.0, batch=2)
    two["stages"][1].update(batch_size=1, grad_accum=2)
    for raw in (one, two):
        raw.update({"save_every": 1, **top})
    return one, two


def _same_training(one, two, tol=1e-5):
    a, b = _rows(one), _rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["stage"] for r in b] == ["sft", "sft", "dmpo", "dmpo"]
    for key in ("loss", "chosen_logp"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], abs=tol), key
    assert [r["reward_accuracy"] for r in b[2:]] == [r["reward_accuracy"] for r in a[2:]]
    va, vb = _rows(one, "valid"), _rows(two, "valid")
    assert len(va) == len(vb) > 0 and [r["loss"] for r in vb] == pytest.approx([r["loss"] for r in va], abs=tol)
    _assert_same_adapter(two / "adapter", one / "adapter", atol=tol)
    wa, wb = _adapter(one / "adapter"), _adapter(two / "adapter")  # the observed figures, for the docs (pytest -s)
    print(f"{two.name}: losses differ by <= {max(abs(x['loss'] - y['loss']) for x, y in zip(a, b)):.1e}, adapter "
          f"by <= {max((wa[k] - wb[k]).abs().max().item() for k in wa):.1e}")


def _launch(cfg_path, *args):
    proc = train_two_processes(cfg_path, "--config_file", str(FSDP), args=args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fsdp2_on_two_cpu_processes_trains_what_one_process_trains(tiny_dir, data_dirs, tmp_path):
    """configs/accelerate/fsdp.yaml (FSDP2, full state dict) on 2 CPU processes: the decoder layers are sharded
    over gloo (the run says so), SFT then DMPO with the packed trees and the reference cache give one process's
    losses and adapter; a copy killed after step 3 (inside DMPO) resumes under FSDP to the same adapter."""
    one, two = _pair(tiny_dir, data_dirs / "pw", tmp_path)
    train(_cfg(one))
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(two))
    proc = _launch(cfg_path)
    assert "FSDP2 on CPU processes" in proc.stderr
    run = tmp_path / "two"
    info = json.loads((run / "run.json").read_text())
    assert info["num_processes"] == 2 and info["distributed"] == "FSDP"
    assert info["stage_info"]["dmpo"]["global_batch"] == 4
    _same_training(tmp_path / "one", run)
    # Accelerate's FSDP save_state gathers the model into pytorch_model_fsdp.bin (DDP's checkpoints hold no model)
    saved = sorted(p.name for p in (run / "checkpoints" / "step-3").iterdir())
    assert "pytorch_model_fsdp.bin" in saved and "optimizer.bin" in saved, saved
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    for p in checkpoints(killed)[3:]:
        shutil.rmtree(p)
    shutil.rmtree(killed / "adapter")
    shutil.rmtree(killed / "best", ignore_errors=True)
    (killed / "run.json").unlink()
    cfg_path.write_text(yaml.safe_dump({**two, "output_dir": str(killed)}))
    _launch(cfg_path, "--resume")
    assert json.loads((killed / "run.json").read_text())["resumes"] == 1
    _same_training(tmp_path / "one", killed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_the_loopback_train_what_one_process_trains(tiny_dir, data_dirs, tmp_path):
    """Two `accelerate launch` commands, as on two machines (--num_machines 2, --machine_rank 0 and 1, one process
    each, rank 0's address 127.0.0.1), form one gloo group of 2 and train what one process trains (DDP)."""
    one, two = _pair(tiny_dir, data_dirs / "pw", tmp_path, save_every=None)
    train(_cfg(one))
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(two))
    port = str(_free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank",
         str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--num_processes", "2",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "prefrec", "train", str(cfg_path)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}) for rank in (0, 1)]
    try:
        errs = [node.communicate(timeout=300)[1] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-2000:] for e in errs)
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["num_processes"] == 2 and info["distributed"] == "MULTI_CPU"
    _same_training(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("env,error", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "asks for DeepSpeed, which needs CUDA GPUs.*fsdp.yaml"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "needs fsdp_version: 2"),
])
def test_what_cpu_processes_cannot_run_is_one_error(tiny_dir, data_dirs, tmp_path, monkeypatch, env, error):
    """What `accelerate launch` sets in each process of a CPU launch of zero2.yaml (ZeRO needs CUDA; Accelerate
    would run MULTI_CPU DDP) or of an FSDP1 config (Accelerate's plugin raises a RuntimeError on CPU): refused in
    one line before any process group or file."""
    for key, value in {"WORLD_SIZE": "2", **env}.items():
        monkeypatch.setenv(key, value)
    one, _ = _pair(tiny_dir, data_dirs / "pw", tmp_path)
    with pytest.raises(UserError, match=error):
        train(_cfg(one))
    assert not (tmp_path / "one").exists()


def test_fsdp2_with_the_trunk_cache_trains_what_one_process_trains(tiny_dir, data_dirs, tmp_path):
    """FSDP2 on 2 CPU processes with LoRA on the top layer from the trunk cache, through SFT and then DMPO (whose
    trees are new, so the cache grows after the model was sharded): the losses and adapter of one process without
    any cache."""
    top = {"trunk_cache_dir": str(tmp_path / "trunk")}
    one, two = _pair(tiny_dir, data_dirs / "pw", tmp_path, **top)
    for raw in (one, two):
        raw["lora"]["layers"] = 1
    one["trunk_cache"] = False
    train(_cfg(one))
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(two))
    _launch(cfg_path)
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["distributed"] == "FSDP" and info["trunk_cache"]["start_layer"] == 1
    _same_training(tmp_path / "one", tmp_path / "two")
