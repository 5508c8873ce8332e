"""The benchmarks' shared rules: a busy machine gives a draft, never a final result (quiet.py); useful FLOPs counted
as the attention mask allows (flops.py)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_machine(monkeypatch):
    """A 2-core machine whose clocks and counters the test moves by hand."""
    q = _load("quiet")
    state = {"t": 0.0, "machine": 1000.0, "own": 10.0, "load": (0.1, 0.1, 0.1)}
    monkeypatch.setattr(q, "_machine_busy_cpu_s", lambda: state["machine"])
    monkeypatch.setattr(q, "_own_cpu_s", lambda: state["own"])
    monkeypatch.setattr(q.time, "monotonic", lambda: state["t"])
    monkeypatch.setattr(q.os, "getloadavg", lambda: state["load"])
    monkeypatch.setattr(q.os, "cpu_count", lambda: 2)
    return q, state


def test_a_benchmark_using_every_core_itself_is_quiet(fake_machine):
    q, state = fake_machine
    quiet = q.Quiet()
    # 100 s on 2 cores: we used 195 core-seconds, the machine 200 in all; the load average is ~2 from us alone
    state.update(t=100.0, own=205.0, machine=1200.0, load=(2.0, 1.5, 1.0))
    rec = quiet.finish()
    assert rec["others_cpu_share"] == pytest.approx(0.025) and not rec["busy"]
    assert q.result_stem("packing", rec["busy"]).name == "packing"
    assert q.describe(rec).startswith("Quiet machine")
    assert rec["cpu"] and f"CPU: {rec['cpu']}, 2 cores" in q.describe(rec)  # the sessions' machines differ


def test_other_processes_or_a_busy_start_make_a_draft(fake_machine):
    q, state = fake_machine
    quiet = q.Quiet()
    state.update(t=100.0, own=110.0, machine=1150.0)  # others took 50 of 200 core-seconds
    rec = quiet.finish()
    assert rec["busy"] and rec["others_cpu_share"] == pytest.approx(0.25) and "25%" in rec["why"]
    assert q.result_stem("packing", rec["busy"]).name == "packing-draft"
    assert q.describe(rec).startswith("**DRAFT")

    state.update(load=(1.4, 1.0, 1.0))  # something was running when it started (limit 0.5 per core)
    quiet = q.Quiet()
    state.update(t=200.0, own=310.0, machine=1350.0)
    rec = quiet.finish()
    assert rec["busy"] and "load average 1.40 at the start" in rec["why"]


def test_output_args_send_a_smoke_run_beside_the_committed_result(tmp_path):
    import argparse

    q = _load("quiet")
    ap = argparse.ArgumentParser()
    q.add_output_args(ap, "train_throughput")
    default = ap.parse_args([])
    assert q.result_stem(default.name, False, default.out_dir) == q.RESULTS / "train_throughput"
    args = ap.parse_args(["--name", "smoke", "--out-dir", str(tmp_path)])
    assert q.result_stem(args.name, True, args.out_dir) == tmp_path / "smoke-draft"


@pytest.mark.parametrize("name", ["train_throughput", "eval_pairwise", "vs_trl", "packing", "serve_load",
                                  "profile_steps", "serve_batching", "trunk_quality"])
def test_every_timing_benchmark_takes_the_output_args(name):
    """Asked by its command line, not by reading its source: each benchmark's --help offers --name and --out-dir."""
    res = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--name" in res.stdout and "--out-dir" in res.stdout and "--out " not in res.stdout


def test_attention_pairs_count_what_the_tree_mask_allows():
    f = _load("flops")
    prompt, responses = 5, [3, 1, 4]

    def brute(packed):
        if not packed:
            return sum(sum(q + 1 for q in range(prompt + r)) for r in responses)
        pairs = sum(q + 1 for q in range(prompt))  # causal within the prompt
        for r in responses:  # each response token sees the prompt and its own earlier tokens, not other responses
            pairs += sum(prompt + j + 1 for j in range(r))
        return pairs

    assert f.attention_pairs(prompt, responses, packed=True) == brute(True) == 15 + 21 + 6 + 30
    assert f.attention_pairs(prompt, responses, packed=False) == brute(False)


def test_profile_buckets_split_lora_from_base_matmuls_and_phases_first():
    """profile_steps files an operator by its enclosing phase, then by name; a matmul with a dimension equal to the
    LoRA rank is the adapter's."""
    from types import SimpleNamespace as E

    sys.path.insert(0, str(BENCH))
    from profile_steps import bucket

    assert bucket(E(name="aten::mm", input_shapes=[[430, 576], [576, 16]]), None, 16) == "matmul-lora"
    assert bucket(E(name="aten::mm", input_shapes=[[430, 576], [576, 1536]]), None, 16) == "matmul-base"
    assert bucket(E(name="aten::_scaled_dot_product_flash_attention_for_cpu", input_shapes=[]), None, 16) == "attention"
    assert bucket(E(name="aten::mul", input_shapes=[[16]]), None, 16) == "elementwise"
    assert bucket(E(name="aten::mm", input_shapes=[[4, 16]]), "optimizer", 16) == "optimizer"
