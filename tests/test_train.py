"""prefrec.training.recipe on a tiny random Llama: the recipe, the run folder, exact resume after a kill, 2 processes = 1.

Independent checks: the first SFT loss and the cached reference log-probs are recomputed with the naive path
(prefrec.scoring.packing.naive_response_logps: one full sequence per response, plain transformers forward) from the model
files on disk; a resumed run must reproduce the uninterrupted run's adapter (1e-6) and losses; 2 DDP processes
(gloo) with half the per-process batch must reproduce 1 process (1e-5, see test_two_processes_match_one_process).
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny_model, train_two_processes
from safetensors.torch import load_file

from prefrec.errors import UserError
from prefrec.results import is_run_dir
from prefrec.samples import Comparison, Sample, write_samples
from prefrec.training.config import config_from_dict, load_config, resolve_paths
from prefrec.training.batches import encode_trees, epoch_order, shard, stage_k, with_k_negatives
from prefrec.training.recipe import train
from prefrec.training.runfolder import check_run_folder, checkpoints
from prefrec.training.stages import cosine_with_warmup

TITLES = ["Alien", "Heat", "Fargo", "Casino", "Rocky", "Jaws", "Up", "Cars", "Brazil", "Ran", "Babe", "Big"]
REPO = Path(__file__).resolve().parents[1]


def _pairwise(i: int, k: int = 3) -> Sample:
    g = torch.Generator().manual_seed(i)
    perm = [TITLES[j] for j in torch.randperm(len(TITLES), generator=g).tolist()]
    hist, pos, negs = perm[:3], perm[3], perm[4:4 + k]
    comps = [Comparison(question=f" Rank {pos} and {n}.", chosen=f"{pos}, {n}", rejected=[f"{n}, {pos}"])
             for n in negs]
    return Sample(id=f"pw-{i}", task="pairwise", domain="movies", prefix="Seen: " + ", ".join(hist) + ".",
                  comparisons=comps, target=pos, candidates=[pos, *negs])


def _candidates(i: int, k: int = 3) -> Sample:
    g = torch.Generator().manual_seed(1000 + i)
    perm = [TITLES[j] for j in torch.randperm(len(TITLES), generator=g).tolist()]
    hist, cands = perm[:3], perm[3:3 + k + 2]
    return Sample(id=f"cd-{i}", task="candidates", domain="movies", prefix="Seen: " + ", ".join(hist) + ".",
                  comparisons=[Comparison(question=" Pick one: " + ", ".join(cands) + ".", chosen=cands[0],
                                          rejected=cands[1:])], target=cands[0], candidates=cands)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_tokenizer):
    """The tiny model + the real tokenizer saved as a local model folder (what a config's model.name points at)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), embedded_tokenizer, seed=3)


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    write_samples(root / "pw" / "train.jsonl", [_pairwise(i) for i in range(8)])
    write_samples(root / "pw" / "valid.jsonl", [_pairwise(100 + i) for i in range(3)])
    write_samples(root / "cd" / "train.jsonl", [_candidates(i, k=4) for i in range(8)])  # 5 negatives in the data
    write_samples(root / "cd" / "valid.jsonl", [_candidates(100 + i, k=4) for i in range(3)])
    return root


def _raw(tiny_dir, data, out, *, kind="dmpo", sft_epochs=2, align_epochs=4, batch=4, dropout=0.1, **align):
    return {
        "output_dir": str(out), "seed": 5, "progress": False, "save_every": 2, "keep_last": 100,
        "model": {"name": str(tiny_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": dropout},
        "data": {"dir": str(data)},
        "stages": [{"kind": "sft", "epochs": sft_epochs, "lr": 5e-3, "batch_size": batch},
                   {"kind": kind, "epochs": align_epochs, "lr": 5e-3, "batch_size": batch, "beta": 0.5, **align}],
    }


def _cfg(raw):
    return resolve_paths(config_from_dict(raw, "test"))


def _rows(run, split="train"):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == split]


def _adapter(folder):
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def _assert_same_adapter(a, b, atol):
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys() and wa
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"adapters differ by {worst}"


@pytest.fixture(scope="module")
def full_run(tiny_dir, data_dirs, tmp_path_factory):
    """SFT (2 epochs = 4 steps) -> DMPO k=3 (2 epochs = 4 steps), LoRA dropout 0.1, checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("runs") / "full"
    raw = _raw(tiny_dir, data_dirs / "pw", out, align_epochs=2, ftx=0.5)
    raw["eval_every"] = 2
    run = train(_cfg(raw))
    return run, raw


# ---- pure helpers ------------------------------------------------------------------------------------------------

def test_with_k_negatives():
    pw = _pairwise(0, k=3)
    two = with_k_negatives(pw, 2)
    assert [c.rejected for c in two.comparisons] == [c.rejected for c in pw.comparisons[:2]]
    cd = _candidates(0, k=4)
    assert with_k_negatives(cd, 3).comparisons[0].rejected == cd.comparisons[0].rejected[:3]
    assert with_k_negatives(cd, 3).comparisons[0].chosen == cd.comparisons[0].chosen


def test_stage_k_defaults_and_errors():
    pw = [_pairwise(i, k=3) for i in range(3)]
    assert stage_k("dmpo", None, pw, "x") == 3
    assert stage_k("dpo", None, pw, "x") == 1
    assert stage_k("sft", None, pw, "x") is None
    with pytest.raises(UserError, match="k=4 but sample 'pw-0' has only 3"):
        stage_k("sdpo", 4, pw, "x")
    with pytest.raises(UserError, match="different numbers of negatives"):
        stage_k("dmpo", None, pw + [_pairwise(9, k=2)], "x")


def test_epoch_order_is_a_seeded_permutation_independent_of_global_rng():
    a = epoch_order(10, 1, 0, 0)
    torch.manual_seed(123)
    torch.rand(5)
    assert epoch_order(10, 1, 0, 0) == a
    assert sorted(a) == list(range(10))
    assert epoch_order(10, 1, 0, 1) != a and epoch_order(10, 2, 0, 0) != a


@pytest.mark.parametrize("n,world", [(7, 2), (8, 2), (1, 2), (5, 1), (10, 3)])
def test_shard_covers_in_rank_order(n, world):
    parts = [shard(n, r, world) for r in range(world)]
    assert len({len(p) for p in parts}) == 1
    flat = [i for p in parts for i in p]
    assert flat[:n] == list(range(n)) and set(flat[n:]) <= {n - 1}


def test_cosine_with_warmup():
    f = [cosine_with_warmup(s, warmup=2, total=10) for s in range(10)]
    assert f[:2] == [0.5, 1.0]
    for s in range(2, 10):
        assert f[s] == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 2) / 8)))
    assert all(x > 0 for x in f)
    assert cosine_with_warmup(0, warmup=0, total=5) == 1.0


# ---- the full recipe ---------------------------------------------------------------------------------------------

def test_run_folder(full_run):
    run, raw = full_run
    info = json.loads((run / "run.json").read_text())
    assert info["stages"] == ["sft", "dmpo"] and info["seed"] == 5 and info["base_model"] == raw["model"]["name"]
    assert {"sft", "dmpo", "reference", "total"} <= set(info["timings"])
    assert info["git_commit"] is None or isinstance(info["git_commit"], str)
    assert info["versions"]["torch"] and info["stage_info"]["dmpo"]["k"] == 3
    assert info["prompt_format"]["kind"] == "chat-template" and info["prompt_format"]["end_of_turn"] == "<|im_end|>"
    assert load_config(run / "config.yaml") == _cfg(raw)
    train_rows = _rows(run)
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert [r["stage"] for r in train_rows] == ["sft"] * 4 + ["dmpo"] * 4
    for key in ("loss", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin", "chosen_logp",
                "rejected_logp", "lr", "grad_norm", "epoch", "seconds"):
        assert all(key in r for r in train_rows[4:]), key
    valid_rows = _rows(run, "valid")
    assert [r["step"] for r in valid_rows] == [2, 4, 6, 8] and all(r["n"] == 3 for r in valid_rows)
    assert [p.name for p in checkpoints(run)] == [f"step-{s}" for s in (2, 4, 6, 8)]
    best = json.loads((run / "best" / "best.json").read_text())
    aligned = [r for r in valid_rows if r["stage"] == "dmpo"]
    assert best["metric"] == "reward_accuracy" and best["value"] == max(r["reward_accuracy"] for r in aligned)
    _assert_same_adapter(run / "adapter", run / "checkpoints" / "step-8" / "adapter", atol=0)
    state = json.loads((run / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert state["stage_index"] == 1 and state["stage_step"] == 2 and state["samples_consumed"] == 8
    assert (run / "checkpoints" / "step-6" / "optimizer.bin").is_file()  # Accelerate save_state
    assert (run / "checkpoints" / "step-6" / "random_states_0.pkl").is_file()
    assert not list((run / "checkpoints" / "step-6").glob("model*.safetensors"))  # the frozen base is not copied


def test_first_sft_loss_matches_naive_computation(full_run, tiny_dir, data_dirs):
    """Step 1 runs the base model (LoRA B = 0): its loss is the token-mean NLL of the chosen responses of the first
    global batch of the seeded order, recomputed here one full sequence per response."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefrec.samples import read_jsonl
    from prefrec.scoring.packing import naive_response_logps

    run, raw = full_run
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    samples = read_jsonl(data_dirs / "pw" / "train.jsonl")
    first = [samples[i] for i in epoch_order(len(samples), raw["seed"], 0, 0)[:4]]
    with torch.no_grad():
        scores = naive_response_logps(model, encode_trees(tok, first, "sft", None), per_token=True)
    tokens = torch.cat(scores.token_logps).double()
    assert _rows(run)[0]["loss"] == pytest.approx(-tokens.mean().item(), abs=1e-5)


def test_reference_cache_is_the_model_after_sft(full_run, tiny_dir, data_dirs):
    """ref_logps.safetensors = log-probs under base + the adapter of the SFT stage's last checkpoint (step 4)."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefrec.samples import read_jsonl
    from prefrec.scoring.packing import naive_response_logps

    run, _ = full_run
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "checkpoints" / "step-4" / "adapter").eval()
    with safe_open(str(run / "ref_logps.safetensors"), framework="pt") as f:
        meta = f.metadata()
        cached = {s: (f.get_tensor(f"{s}.chosen"), f.get_tensor(f"{s}.rejected")) for s in ("train", "valid")}
    for split in ("train", "valid"):
        samples = read_jsonl(data_dirs / "pw" / f"{split}.jsonl")
        assert json.loads(meta[f"{split}.ids"]) == [s.id for s in samples]
        with torch.no_grad():
            scores = naive_response_logps(model, encode_trees(tok, samples, "dmpo", 3))
        chosen, rejected = [], []
        for t in range(len(samples)):  # per sample: every rejected in order, each next to its comparison's chosen
            mine = [(b, i, scores.summed[n]) for n, (tt, b, i) in enumerate(scores.index) if tt == t]
            own = {b: v for b, i, v in mine if i == 0}
            chosen.append(torch.stack([own[b] for b, i, _ in mine if i > 0]))
            rejected.append(torch.stack([v for _, i, v in mine if i > 0]))
        torch.testing.assert_close(cached[split][0], torch.stack(chosen), atol=1e-4, rtol=0)
        torch.testing.assert_close(cached[split][1], torch.stack(rejected), atol=1e-4, rtol=0)
    assert cached["train"][0].shape == cached["train"][1].shape == (8, 3) and meta["chosen"] == "pairs"


def test_adapter_reloads_with_load_model(full_run):
    from prefrec.model import load_model

    run, _ = full_run
    model, _tok = load_model(str(run), device="cpu")
    saved = _adapter(run / "adapter")
    got = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(got) == len(saved)
    for name, value in saved.items():
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(got[key].detach(), value), name
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)  # training moved B off zero


# ---- resume ------------------------------------------------------------------------------------------------------

def _killed_copy(run: Path, dest: Path, step: int) -> None:
    """The run folder as a kill right after checkpoint `step` leaves it (plus metrics rows of later steps, which the
    resumed run must drop): later checkpoints, final adapter, run.json and best/ are gone; the reference cache only
    exists once the alignment stage has started (step > 4)."""
    shutil.copytree(run, dest)
    for p in checkpoints(dest):
        if int(p.name[5:]) > step:
            shutil.rmtree(p)
    for name in ("adapter", "best"):
        shutil.rmtree(dest / name)
    (dest / "run.json").unlink()
    if step <= 4:
        (dest / "ref_logps.safetensors").unlink()


class _Hostile:
    """A pickle that would run a command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_names_a_damaged_checkpoint_file(full_run, tmp_path):
    # a corrupt random_states_0.pkl was silently ignored at a stage boundary (Accelerate logs and goes on with a
    # fresh RNG); a hostile optimizer.bin was a 100-line traceback (#43)
    import pickle

    run, raw = full_run
    marker = tmp_path / "ran"
    for step, name, content in ((4, "random_states_0.pkl", b"not a pickle"),
                                (6, "optimizer.bin", pickle.dumps(_Hostile(marker)))):
        dest = tmp_path / f"damaged-{step}"
        _killed_copy(run, dest, step)
        (dest / "checkpoints" / f"step-{step}" / name).write_bytes(content)
        with pytest.raises(UserError, match=rf"step-{step}\S* is damaged \(.*\); start the run again without "
                                            rf"--resume, or delete .*step-{step} to resume from the checkpoint before"):
            train(_cfg({**raw, "output_dir": str(dest)}), resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("step", [2, 4, 6])  # in SFT, at the SFT -> DMPO boundary, in DMPO
def test_resume_reproduces_uninterrupted_run(full_run, tmp_path, step):
    run, raw = full_run
    dest = tmp_path / "resumed"
    _killed_copy(run, dest, step)
    cfg = _cfg({**raw, "output_dir": str(dest)})
    train(cfg, resume=True)
    _assert_same_adapter(dest / "adapter", run / "adapter", atol=1e-6)
    a, b = _rows(dest), _rows(run)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    assert json.loads((dest / "run.json").read_text())["resumes"] == 1


def test_kill_subprocess_then_resume(full_run, tmp_path):
    """A real SIGKILL of `python -m prefrec train` right after its first checkpoint (step 2 of 8), then --resume
    through the CLI (test_resume_reproduces_uninterrupted_run covers a checkpoint inside the alignment stage)."""
    run, raw = full_run
    dest = tmp_path / "killed"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({**raw, "output_dir": str(dest)}))
    proc = subprocess.Popen([sys.executable, "-m", "prefrec", "train", str(cfg_path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = dest / "checkpoints" / "step-2"
    deadline = time.time() + 300
    try:
        while not target.is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert target.is_dir(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (dest / "run.json").exists(), "the run finished before the kill; the test did not test resume"
    from typer.testing import CliRunner

    from prefrec.cli import app

    result = CliRunner().invoke(app, ["train", str(cfg_path), "--resume"])
    assert result.exit_code == 0, result.output
    _assert_same_adapter(dest / "adapter", run / "adapter", atol=1e-6)
    assert [r["loss"] for r in _rows(dest)] == pytest.approx([r["loss"] for r in _rows(run)], abs=1e-6)


def test_resume_refuses_a_changed_config_and_busy_folder_needs_resume(full_run, tmp_path):
    run, raw = full_run
    with pytest.raises(UserError, match="already holds a run"):
        train(_cfg(raw))
    dest = tmp_path / "changed"
    _killed_copy(run, dest, 6)
    changed = {**raw, "output_dir": str(dest), "stages": [raw["stages"][0], {**raw["stages"][1], "beta": 0.9}]}
    with pytest.raises(UserError, match=r"config differs .* \['stages'\]"):
        train(_cfg(changed), resume=True)
    # a run from before a key was added (its config.yaml lacks it) resumes when the key keeps its default;
    # ml1m-table2's DMPO cell was refused over allow_unusual and divergence_factor (#43)
    older = tmp_path / "older"
    _killed_copy(run, older, 6)
    saved = yaml.safe_load((older / "config.yaml").read_text())
    assert saved.pop("divergence_factor") == 10 and saved.pop("allow_unusual") is False
    (older / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert check_run_folder(_cfg({**raw, "output_dir": str(older)}), older, resume=True).name == "step-6"
    with pytest.raises(UserError, match=r"config differs .* \['divergence_factor'\]"):
        check_run_folder(_cfg({**raw, "output_dir": str(older), "divergence_factor": 5}), older, resume=True)
    # a checkpoint without Accelerate's RNG file (an older prefrec's) is refused, not resumed with a fresh RNG
    old = tmp_path / "old"
    _killed_copy(run, old, 6)
    (old / "checkpoints" / "step-6" / "random_states_0.pkl").unlink()
    with pytest.raises(UserError, match=r"step-6 has no random_states_0.pkl"):
        train(_cfg({**raw, "output_dir": str(old)}), resume=True)
    # a folder another live prefrec is training (another experiment runner needing the same SFT) is not touched
    from prefrec import io

    busy = tmp_path / "busy"
    _killed_copy(run, busy, 6)
    before = (busy / "metrics.jsonl").read_bytes()
    with io.exclusive(busy, "run folder"), pytest.raises(io.Locked, match="is being written by process"):
        train(_cfg({**raw, "output_dir": str(busy)}), resume=True)
    assert (busy / "metrics.jsonl").read_bytes() == before and not (busy / "run.json").exists()


# ---- more processes ----------------------------------------------------------------------------------------------

def test_two_processes_match_one_process(tiny_dir, data_dirs, tmp_path):
    """DDP over 2 CPU processes (gloo, launched by `accelerate launch --multi_gpu`, see docs/train.md) vs 1 process
    with the same global batch of 4: SFT 2 per process vs 4, DMPO 1 per process x 2 accumulation vs 4. Same global
    batches, so the same losses and weights up to float summation order: tolerance 1e-5 absolute (observed ~1e-7).
    LoRA dropout is 0 because each process draws its own dropout masks."""
    one = tmp_path / "one"
    raw = _raw(tiny_dir, data_dirs / "pw", one, sft_epochs=1, align_epochs=1, dropout=0.0)
    raw["save_every"] = None
    raw["stages"][0]["max_steps"] = 1
    train(_cfg(raw))
    two = tmp_path / "two"
    raw2 = _raw(tiny_dir, data_dirs / "pw", two, sft_epochs=1, align_epochs=1, dropout=0.0, batch=2)
    raw2["save_every"] = None
    raw2["stages"][0]["max_steps"] = 1
    raw2["stages"][1].update(batch_size=1, grad_accum=2)  # the alignment stage also accumulates (DDP no_sync)
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(raw2))
    proc = train_two_processes(cfg_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((two / "run.json").read_text())
    assert info["num_processes"] == 2 and info["stage_info"]["dmpo"]["global_batch"] == 4
    assert info["distributed"] == "MULTI_CPU"  # DDP over gloo
    a, b = _rows(one), _rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss", "chosen_logp"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], abs=1e-5), key
    assert [r["reward_accuracy"] for r in b[1:]] == [r["reward_accuracy"] for r in a[1:]]
    # validation (3 samples: process 1 scores a padded shard) is gathered the same way
    va, vb = _rows(one, "valid"), _rows(two, "valid")
    assert len(va) == len(vb) == 2 and all(r["n"] == 3 for r in vb)
    assert [r["loss"] for r in vb] == pytest.approx([r["loss"] for r in va], abs=1e-5)
    _assert_same_adapter(two / "adapter", one / "adapter", atol=1e-5)


def test_two_processes_match_one_process_with_the_trunk_cache(tiny_dir, data_dirs, tmp_path):
    """The same DDP comparison with LoRA on the top layer and the trunk cache: the main process builds the shared
    cache, both read it; losses and adapter equal one process that trains without any cache (1e-5)."""
    def raw_for(out, **kw):
        raw = _raw(tiny_dir, data_dirs / "pw", out, sft_epochs=1, align_epochs=1, dropout=0.0, **kw)
        raw.update(save_every=None, trunk_cache_dir=str(tmp_path / "trunk"))
        raw["lora"]["layers"] = 1
        raw["stages"][0]["max_steps"] = 1
        return raw

    one = raw_for(tmp_path / "one")
    one["trunk_cache"] = False
    train(_cfg(one))
    raw2 = raw_for(tmp_path / "two", batch=2)
    raw2["stages"][1].update(batch_size=1, grad_accum=2)
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(raw2))
    proc = train_two_processes(cfg_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["trunk_cache"]["start_layer"] == 1 and info["trunk_cache"]["stored_trees"] >= 11
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    for key in ("loss", "chosen_logp"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], abs=1e-5), key
    _assert_same_adapter(tmp_path / "two" / "adapter", tmp_path / "one" / "adapter", atol=1e-5)


def test_the_trunk_cache_gives_the_run_without_it(tiny_dir, data_dirs, tmp_path):
    """LoRA on the top layer, SFT then DMPO with the reference and validation: the cached run's losses, validation
    metrics and adapter equal the uncached run's (1e-5; the numbers are the same forward, reordered), the cache
    holds every training and validation tree, and a second run reads it without computing any tree again."""
    runs = {}
    for name, cached in (("plain", False), ("cached", True), ("again", True)):
        raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / name, sft_epochs=1, align_epochs=2, dropout=0.0)
        raw.update(trunk_cache=cached, trunk_cache_dir=str(tmp_path / "trunk"), save_every=None)
        raw["lora"]["layers"] = 1
        runs[name] = train(_cfg(raw))
    info = json.loads((runs["cached"] / "run.json").read_text())
    assert info["lora_layers"] == 1 and "trunk_cache" not in json.loads((runs["plain"] / "run.json").read_text())
    tc = info["trunk_cache"]
    assert tc["start_layer"] == 1 and tc["computed_unstored"] == 0 and tc["built"] == 8 + 3 + 8 + 3  # sft + dmpo trees
    again = json.loads((runs["again"] / "run.json").read_text())["trunk_cache"]
    assert again["built"] == 0 and again["computed_unstored"] == 0
    for split in ("train", "valid"):
        a, b = _rows(runs["plain"], split), _rows(runs["cached"], split)
        assert len(a) == len(b) > 0
        for key in ("loss", "reward_accuracy", "chosen_logp"):
            if key in a[-1]:
                assert [r.get(key) for r in b] == pytest.approx([r.get(key) for r in a], abs=1e-5), (split, key)
    _assert_same_adapter(runs["cached"] / "adapter", runs["plain"] / "adapter", atol=1e-5)
    cfg = json.loads((runs["cached"] / "adapter" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1]  # plain PEFT reads which layers carry LoRA
    assert "on the top 1 decoder layers only" in (runs["cached"] / "README.md").read_text()  # the model card
    # prefrec eval of the run reads the same cache (the merged model's bottom is its base's), as does zero-shot
    from prefrec.evaluation.evaluate import evaluate

    kw = dict(split="valid", progress=False, cache_dir=tmp_path / "trunk")
    on = evaluate(runs["cached"], data_dirs / "pw", out=tmp_path / "ev-on", **kw)
    off = evaluate(runs["cached"], data_dirs / "pw", out=tmp_path / "ev-off", trunk_layers=0, **kw)
    zero = evaluate(str(tiny_dir), data_dirs / "pw", out=tmp_path / "ev-zero", trunk_layers=1, **kw)
    assert off["config"]["trunk_cache"] is None
    assert on["config"]["trunk_cache"]["folder"] == zero["config"]["trunk_cache"]["folder"] == tc["folder"]
    assert zero["config"]["trunk_cache"]["built"] == 0  # the run's evaluation stored these trees already
    assert on["metrics"]["auc"] == pytest.approx(off["metrics"]["auc"], abs=1e-6)
    on_rows = [json.loads(x) for x in (tmp_path / "ev-on" / "per_sample.jsonl").read_text().splitlines()]
    off_rows = [json.loads(x) for x in (tmp_path / "ev-off" / "per_sample.jsonl").read_text().splitlines()]
    assert len(on_rows) == len(off_rows) == 3


# ---- other stages and data -------------------------------------------------------------------------------------

def test_sdpo_on_candidates_learns_and_dpo_uses_one_negative(tiny_dir, data_dirs, tmp_path):
    """S-DPO k=3 on 4 candidate samples, one step per epoch: the first step has policy = reference (rewards 0, loss
    log 4); six steps later on the same samples the loss is lower and the chosen title beats all 3 negatives
    for at least half of them."""
    raw = _raw(tiny_dir, data_dirs / "cd", tmp_path / "sdpo", kind="sdpo", sft_epochs=1, align_epochs=6, k=3,
               dropout=0.0)
    raw["save_every"] = None
    raw["data"]["max_train_samples"] = 4
    run = train(_cfg(raw))
    rows = [r for r in _rows(run) if r["stage"] == "sdpo"]
    assert len(rows) == 6
    # equal rewards: softplus(logsumexp of three zeros) = log(1 + 3)
    assert rows[0]["loss"] == pytest.approx(math.log(4), abs=1e-4) and rows[0]["reward_accuracy"] == 0.0
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.05
    assert rows[-1]["reward_accuracy"] >= 0.5
    from safetensors import safe_open

    with safe_open(str(run / "ref_logps.safetensors"), framework="pt") as f:
        assert f.get_tensor("train.rejected").shape == (4, 3)

    raw = _raw(tiny_dir, data_dirs / "cd", tmp_path / "dpo", kind="dpo", sft_epochs=1, align_epochs=1)
    raw["save_every"] = None
    raw["data"]["max_train_samples"] = 4
    run = train(_cfg({**raw, "stages": raw["stages"][1:]}))  # alignment without SFT: reference = base model
    info = json.loads((run / "run.json").read_text())
    assert info["stages"] == ["dpo"] and info["stage_info"]["dpo"]["k"] == 1
    # policy = reference at step 1 (dropout 0.1 acts on LoRA A's input, and B = 0): loss log 2
    assert _rows(run)[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_too_few_samples_and_missing_data(tiny_dir, data_dirs, tmp_path):
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "r", batch=16)
    with pytest.raises(UserError, match=r"stages\[0\] \(sft\): 8 training samples are fewer than one global batch"):
        train(_cfg(raw))
    assert not (tmp_path / "r").exists()  # checked before anything is written
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "r", k=4)
    with pytest.raises(UserError, match=r"stages\[1\] \(dmpo\): k=4 but sample 'pw-0' has only 3"):
        train(_cfg(raw))  # an alignment-stage problem is found before the SFT stage runs
    raw = _raw(tiny_dir, tmp_path / "nothing", tmp_path / "r2")
    with pytest.raises(UserError, match="does not exist"):
        train(_cfg(raw))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:1: missing field"):
        train(_cfg(_raw(tiny_dir, bad, tmp_path / "r3")))


def test_cli_reports_config_errors(tmp_path, data_dirs, tiny_dir):
    from typer.testing import CliRunner

    from prefrec.cli import app

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(tiny_dir, data_dirs / "pw", tmp_path / "out")))
    result = CliRunner().invoke(app, ["train", str(path), "--set", "stages[1].beta=abc"])
    assert result.exit_code == 2
    assert "stages[1].beta: expected float, got 'abc'" in result.output


# ---- dropout in preference stages (issue 12) ------------------------------------------------------------------------

@pytest.mark.parametrize("disable", [None, False])
def test_preference_stage_trains_without_dropout_by_default(tiny_dir, data_dirs, tmp_path, disable):
    """The reference log-probs are computed without dropout; the policy pass must be too, or the first step's
    rewards are dropout noise instead of 0 (policy = reference before the first update). TRL's default."""
    align = {} if disable is None else {"disable_dropout": disable}
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "run", align_epochs=1, dropout=0.5, **align)
    raw["data"]["max_valid_samples"] = 0
    run = train(_cfg(raw))
    first = next(r for r in _rows(run) if r["stage"] == "dmpo")
    noise = abs(first["chosen_reward"]) + abs(first["rejected_reward"])
    if disable is None:
        assert noise < 1e-5, first
    else:
        assert noise > 1e-4, first  # the option keeps dropout on


def test_chosen_displacement_is_the_reward_over_beta_of_the_last_window():
    from prefrec.training.stages import DISPLACEMENT_WINDOW, chosen_displacement

    assert chosen_displacement([-1.0] * (DISPLACEMENT_WINDOW - 1), beta=0.1) is None
    rewards = [0.0] * 5 + [-0.2] * DISPLACEMENT_WINDOW  # the chosen log-prob 2 nats below the reference at β = 0.1
    assert chosen_displacement(rewards, beta=0.1) == pytest.approx(2.0)
    assert chosen_displacement([0.3] * DISPLACEMENT_WINDOW, beta=0.5) == pytest.approx(-0.6)


def test_unlearning_the_chosen_answers_warns_once_and_is_recorded(tiny_dir, data_dirs, tmp_path, monkeypatch,
                                                                  capsys):
    """Wiring of the likelihood-displacement warning: with the mark at -inf over one step it fires at the first
    alignment step, once, on stderr and in run.json (SFT has no reward and never warns)."""
    from prefrec.training import stages

    monkeypatch.setattr(stages, "DISPLACEMENT_WINDOW", 1)
    monkeypatch.setattr(stages, "DISPLACEMENT_NATS", float("-inf"))
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "run", sft_epochs=1, align_epochs=2)
    raw["data"]["max_valid_samples"] = 0
    run = train(_cfg(raw))
    err = capsys.readouterr().err
    assert err.count("prefrec: warning: dmpo step 1: the chosen responses' log-prob is") == 1
    info = json.loads((run / "run.json").read_text())["stage_info"]
    assert info["dmpo"]["warning"].startswith("step 1: ") and "lower lr than 0.005" in info["dmpo"]["warning"]
    assert "warning" not in info["sft"]


def test_dropout_option_defaults_by_stage_kind():
    from prefrec.training.config import StageConfig

    assert StageConfig(kind="dmpo").dropout_off() and StageConfig(kind="sdpo").dropout_off()
    assert not StageConfig(kind="sft").dropout_off()
    assert StageConfig(kind="sft", disable_dropout=True).dropout_off()
    assert not StageConfig(kind="dpo", disable_dropout=False).dropout_off()
def test_cosine_with_warmup_is_transformers_schedule_after_warmup():
    """transformers' get_cosine_schedule_with_warmup gives the same factors from step `warmup` on; during the warmup
    prefrec's factor is the library's of the next step ((s+1)/w instead of s/w, so step 0 learns)."""
    from transformers import get_cosine_schedule_with_warmup

    for warmup, total in [(0, 10), (2, 10), (3, 7), (1, 1)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
        lib = []
        for _ in range(total + 1):
            lib.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        ours = [cosine_with_warmup(s, warmup=warmup, total=total) for s in range(total)]
        assert ours[warmup:] == pytest.approx(lib[warmup:total], abs=1e-12)
        assert ours[:warmup] == pytest.approx(lib[1:warmup + 1], abs=1e-12)
def test_tree_terms_pair_each_rejected_with_its_own_chosen():
    """DPO with k > 1 on pairwise samples: rejected i is compared with comparison i's own chosen ordering."""
    from prefrec.scoring.trees import Branch, Scores, Tree
    from prefrec.training.stages import tree_terms

    s = Scores(summed=torch.tensor([-1.0, -2.0, -3.0, -5.0]), token_logps=[torch.tensor([-1.0])] * 4,
               index=[(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)])
    tree = Tree([1], [Branch([2], [[3], [4, 5]]), Branch([6], [[7, 8, 9], [1]])])
    t = tree_terms(s, [tree])
    assert t["chosen"].tolist() == [[-1.0, -3.0]] and t["rejected"].tolist() == [[-2.0, -5.0]]
    # token counts pair the same way (SimPO/ORPO read p̄ = logp / |y|)
    assert t["chosen_len"].tolist() == [[1.0, 3.0]] and t["rejected_len"].tolist() == [[2.0, 1.0]]


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_dir, data_dirs, tmp_path,
                                                                               monkeypatch):
    """A loss that turns NaN at its 3rd call stops the run with one clear error naming the last checkpoint (step 2,
    save_every = 2); the adapter saved there is finite, and `--resume` goes on from it."""
    from prefrec.training import stages as stages_module

    real, calls = stages_module.stage_loss, []

    def nan_at_third(cfg, batch):
        calls.append(1)
        out = real(cfg, batch)
        return (out[0] * float("nan"),) + out[1:] if len(calls) == 3 else out

    monkeypatch.setattr(stages_module, "stage_loss", nan_at_third)
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "run", sft_epochs=1, batch=2)
    with pytest.raises(UserError, match=r"dmpo step 3: the loss is nan, not finite.*checkpoints/step-\d+"):
        train(_cfg(raw))
    ckpt = checkpoints(tmp_path / "run")[-1]
    assert all(torch.isfinite(v).all() for v in _adapter(ckpt / "adapter").values())
    monkeypatch.setattr(stages_module, "stage_loss", real)
    run = train(_cfg(raw), resume=True)
    assert is_run_dir(run)


def test_a_diverging_loss_stops_training_with_one_line(tiny_dir, data_dirs, tmp_path, monkeypatch):
    """#43: a finite loss that runs away (lr 1e30: 0.74 -> 10.8) trained to exit 0; now the stage stops when its step
    loss passes divergence_factor x max(its first loss, 1). Here the loss is multiplied by 50 from the 3rd call."""
    from prefrec.training import stages as stages_module

    real, calls = stages_module.stage_loss, []

    def blow_up(cfg, batch):
        calls.append(1)
        out = real(cfg, batch)
        return (out[0] * 50.0,) + out[1:] if len(calls) >= 3 else out

    monkeypatch.setattr(stages_module, "stage_loss", blow_up)
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "run", sft_epochs=1, batch=2)
    with pytest.raises(UserError, match=r"dmpo step \d+: the loss is .* over 10 × its first value .*diverged"):
        train(_cfg(raw))
    raw["divergence_factor"] = None  # off: trains on
    monkeypatch.setattr(stages_module, "stage_loss", blow_up)
    calls.clear()
    assert is_run_dir(train(_cfg({**raw, "output_dir": str(tmp_path / "run2")})))


def test_train_refuses_a_folder_that_is_not_a_run_and_retries_a_failed_start(tiny_dir, data_dirs, tmp_path,
                                                                            monkeypatch):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("mine")
    with pytest.raises(UserError, match="not a prefrec run folder"):
        train(_cfg(_raw(tiny_dir, data_dirs / "pw", notes)))
    assert (notes / "README.md").read_text() == "mine" and sorted(p.name for p in notes.iterdir()) == ["README.md"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        train(_cfg(_raw(tiny_dir, data_dirs / "pw", tmp_path / "file")))
    # a start that fails after the folder is opened (here: loading the model) leaves nothing that blocks a rerun
    import prefrec.training.recipe as recipe

    def broken(_r):
        raise UserError("cannot load")

    monkeypatch.setattr(recipe, "_load_policy", broken)
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "run", sft_epochs=1, align_epochs=1)
    with pytest.raises(UserError, match="cannot load"):
        train(_cfg(raw))
    monkeypatch.undo()
    assert is_run_dir(train(_cfg(raw)))


def test_adapters_and_checkpoints_get_the_ordinary_file_modes(tiny_dir, data_dirs, tmp_path):
    """PEFT writes adapter_model.safetensors 0600; prefrec gives every file it writes one rule (issue 31)."""
    mask = os.umask(0o022)
    try:
        run = train(_cfg(_raw(tiny_dir, data_dirs / "pw", tmp_path / "run", sft_epochs=1, align_epochs=1)))
    finally:
        os.umask(mask)
    for f in [run / "adapter" / "adapter_model.safetensors", *run.glob("checkpoints/*/adapter/*.safetensors")]:
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_the_best_validated_adapter_by_the_tasks_own_metric_is_the_runs_adapter(tiny_dir, data_dirs, tmp_path,
                                                                                 capsys):
    """best_metric: auc scores the validation samples as `prefrec eval` scores test samples, every eval_every
    steps; use_best makes RUN/adapter/ the best one, and early stopping ends the last stage after `early_stopping`
    validations without a new best. Checked independently: evaluating the run on the validation split gives the
    AUC logged at the best step."""
    from prefrec.evaluation.evaluate import evaluate

    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "run", sft_epochs=1, align_epochs=6, batch=2)
    raw.update(best_metric="auc", eval_every=1, early_stopping=2, use_best=True)
    run = train(_cfg(raw))
    info = json.loads((run / "run.json").read_text())
    valid = [r for r in _rows(run, "valid") if r["stage"] == "dmpo"]
    assert valid and all("auc" in r for r in valid) and info["adapter"] == "best"
    best = max(valid, key=lambda r: r["auc"])
    assert info["best"]["value"] == best["auc"]
    stop = info["stage_info"]["dmpo"].get("early_stop")
    assert stop is not None  # (this seed stops at step 3 of 24)
    if stop:  # stopped after two validations without a better AUC
        assert stop["step"] < stop["planned_steps"] and valid[-1]["stage_step"] == stop["step"]
        assert len(valid) - 1 - valid.index(best) >= 2
    # the closing table says where it stopped and which validation the adapter is (it said the planned steps and
    # the last validation only)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("dmpo ")]
    assert f"{stop['step']} of {stop['planned_steps']}, stopped early" in line
    assert f"(best {best['auc']:.4f} at step {info['best']['step']})" in line
    got = evaluate(run, data_dirs / "pw", split="valid", out=tmp_path / "ev", progress=False)
    assert got["metrics"]["auc"] == pytest.approx(best["auc"], abs=1e-9)


def test_validation_reads_the_tasks_metrics_off_its_own_pass(tiny_dir, data_dirs, tmp_path, monkeypatch):
    """Pairwise SFT with best_metric auc validates on the task's own trees (chosen and rejected responses) and reads
    the AUC off that one pass: it never scores the validation samples a second time (it did, 40 % of an SFT grid
    cell's time). Checked independently: the logged AUC of the kept adapter is `prefrec eval`'s on the validation
    split, and the loss and chosen log-prob are those of a run validating on the chosen responses alone."""
    import dataclasses

    from prefrec.evaluation.evaluate import evaluate
    from prefrec.training import recipe

    def boom(*a, **kw):
        raise AssertionError("the validation samples were scored a second time")

    row = recipe.task_row("pairwise")
    monkeypatch.setattr(recipe, "task_row", lambda name: dataclasses.replace(row, score=boom))
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "auc", sft_epochs=3, batch=2, dropout=0.0)
    raw["stages"] = raw["stages"][:1]
    raw.update(best_metric="auc", eval_every=1, use_best=True)
    run = train(_cfg(raw))
    monkeypatch.undo()
    valid = _rows(run, "valid")
    best = json.loads((run / "run.json").read_text())["best"]
    assert len(valid) >= 4 and all("auc" in v for v in valid)
    got = evaluate(run, data_dirs / "pw", split="valid", out=tmp_path / "ev", progress=False)
    assert got["metrics"]["auc"] == pytest.approx(best["value"], abs=1e-9)
    raw.update(best_metric="loss", output_dir=str(tmp_path / "loss"))
    plain = _rows(train(_cfg(raw)), "valid")
    assert [v["step"] for v in plain] == [v["step"] for v in valid] and "auc" not in plain[0]
    for a, b in zip(valid, plain):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        # a sum over ~50 token log-probs in fp32, batched beside the rejected responses or not: a few ulps apart
        # (fp32's ulp at 47 is 4e-6), so relative
        assert a["chosen_logp"] == pytest.approx(b["chosen_logp"], rel=1e-6, abs=1e-5)


def test_a_best_metric_the_task_has_not_is_refused_before_anything_is_written(tiny_dir, data_dirs, tmp_path):
    """best_metric: auc on a candidates run found no value at any validation, so the run silently kept its last
    adapter and never stopped early; it is refused up front, naming the candidates task's metrics. rank_mrr runs."""
    raw = _raw(tiny_dir, data_dirs / "cd", tmp_path / "auc", kind="sdpo", sft_epochs=1, align_epochs=1, k=3)
    raw.update(best_metric="auc", eval_every=1, use_best=True)
    with pytest.raises(UserError, match=r"best_metric: 'auc' is not a metric of the candidates task.*rank_mrr"):
        train(_cfg(raw))
    assert not (tmp_path / "auc").exists()
    raw.update(best_metric="rank_mrr", output_dir=str(tmp_path / "mrr"))
    raw["data"]["max_train_samples"] = 4
    info = json.loads((train(_cfg(raw)) / "run.json").read_text())
    assert info["adapter"] == "best" and info["best"]["metric"] == "rank_mrr"
    assert 0 < info["best"]["value"] <= 1


def test_several_samples_per_row_train_the_same_losses_and_weights(tiny_dir, data_dirs, tmp_path):
    """pack_tokens lays the 4 trees of a micro-batch into rows of up to 4,096 tokens (block-diagonal attention,
    positions restarting per tree) instead of 4 padded rows: the same losses and adapter, within float tolerance."""
    base = _raw(tiny_dir, data_dirs / "pw", tmp_path / "rows", sft_epochs=1, align_epochs=1, dropout=0.0)
    rows = train(_cfg(base))
    packed = train(_cfg({**base, "output_dir": str(tmp_path / "packed"), "pack_tokens": 4096}))
    a, b = _rows(rows), _rows(packed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-5)
    _assert_same_adapter(rows / "adapter", packed / "adapter", atol=1e-5)


def test_seconds_per_step_leave_validation_out(tiny_dir, data_dirs, tmp_path, capsys, monkeypatch):
    """The loss line's s/step is the optimizer steps' time: a slow validation between steps 1 and 2 (2 s here) must
    not show up in step 2's figure (it did: the stage's timing holds its validations)."""
    import prefrec.training.recipe as recipe

    def slow(*args, **kwargs):
        time.sleep(2.0)
        return real(*args, **kwargs)

    real = recipe.score_split
    monkeypatch.setattr(recipe, "score_split", slow)
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "slow", sft_epochs=1, dropout=0.0)
    raw["stages"] = raw["stages"][:1]
    raw.update(save_every=None, logging_steps=1, progress=False, eval_every=1)
    train(_cfg(raw))
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("prefrec: sft step 2/2 loss "))
    assert float(line.split()[-2]) < 1.0, line


def test_training_talks_where_no_bar_is_shown(tiny_dir, data_dirs, tmp_path, capsys):
    """Without a terminal: a loss line every logging_steps steps, one per validation, and a closing table naming
    every stage and the adapter's folder."""
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "talk", sft_epochs=1, align_epochs=1, dropout=0.0)
    raw.update(save_every=None, logging_steps=1, progress=False)
    run = train(_cfg(raw))
    err = capsys.readouterr().err
    assert "prefrec: sft step 1/2 loss " in err and "prefrec: dmpo step 2/2 loss " in err and "reward_accuracy" in err
    assert "prefrec: sft step 2/2 validation (3 samples): loss " in err
    table = err[err.index("prefrec: finished"):].splitlines()
    assert table[1].split()[:4] == ["stage", "steps", "final", "loss"]
    assert [row.split()[0] for row in table[2:4]] == ["sft", "dmpo"]
    assert table[4] == f"adapter (last): {run / 'adapter'}"
    raw.update(output_dir=str(tmp_path / "quiet"), logging_steps=0)
    train(_cfg(raw))
    assert "prefrec: sft step" not in capsys.readouterr().err


def test_a_bf16_alignment_run_whose_reference_pass_comes_first_trains(tiny_dir, data_dirs, tmp_path):
    """A DMPO run with no SFT stage before it (an experiment's alignment cell starts from its SFT adapter) on a bf16
    model with top-N LoRA and the trunk cache, as the ML-1M curve runs: the reference pass under inference_mode is
    the first forward, and the float32 copy of the frozen head it made failed the first training step ("Inference
    tensors cannot be saved for backward")."""
    raw = _raw(tiny_dir, data_dirs / "pw", tmp_path / "run", align_epochs=1, dropout=0.0)
    raw["stages"] = raw["stages"][1:]
    raw.update(model={"name": str(tiny_dir), "dtype": "bf16"}, lora={"r": 4, "alpha": 8, "dropout": 0.0, "layers": 1},
               trunk_cache=True, trunk_cache_dir=str(tmp_path / "trunk"))
    run = train(_cfg(raw))
    losses = [r["loss"] for r in _rows(run)]
    assert losses and all(math.isfinite(x) for x in losses)
