"""The quickstart: ML-100K -> SFT on the embedded model -> evaluation against zero-shot on the whole test split -> report.

It is one point of the learning curve (configs/experiments/learning-curve.yaml, docs/results/learning-curve): the
cheapest point at which the fine-tuned 135M model beats zero-shot on 2 CPU cores, not the papers' few-shot protocol
(whose every CPU-sized run is at chance, docs/results/README.md). The regime, in full:
- data: ML-100K, DMPO pairwise protocol, k = 3 comparisons per sample sharing one history of 10 titles; every
  non-test user trains (180 train + 20 valid users; the 702 test users are the default split's), up to 20 samples
  per user along the timeline, the first 1,000 samples (3,000 pairs) used;
- hybrid prompt: the user's own ratings beside the history titles, and each candidate's mean rating and rater count
  from the other non-test users (docs/data.md, "More signal per sample");
- SFT: one epoch, LoRA r = 16 on attention and MLP without dropout (the curve's cells: 0.05), lr 1e-3, 4 samples
  per optimizer step;
- evaluation: all 702 test users x 3 comparisons, zero-shot and SFT on the same samples, with a paired bootstrap
  test in the report;
- precision: bf16 weights with fp32 LoRA master weights (packing.mixed_precision) on a CPU whose bf16 matmuls are
  at least twice its fp32 rate (AMX), fp32 elsewhere (an AVX-512 CPU without BF16 multiplies bf16 at a fifth of its
  fp32 rate). The learning curve's cells are fp32; docs/results/quickstart compares the two on the same test
  samples. The trained adapter is folded into the base weights for evaluation (model.load_model).
DMPO and DPO are in the learning curve; they do not fit the quickstart's 45 minutes on 2 cores. Apart from the
precision and the LoRA dropout, the settings equal the learning curve's (tests/test_quickstart.py checks it).
It runs through exactly the code that `prefrec experiment` uses; a second run skips what is already finished.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from prefrec import io

SHOTS = 1000  # training samples (3 pairs each)
LORA_DROPOUT = 0.0  # the curve's cells use 0.05 (see quickstart_config)
BF16_MIN_SPEEDUP = 2.0  # bf16 on a CPU only where its matmuls are at least this many times the fp32 rate

QUICKSTART = {
    "name": "quickstart",
    "datasets": [{"label": "ml-100k", "dataset": "ml-100k", "task": "pairwise",
                  "prepare": {"n_train": 180, "n_valid": 20, "n_test": 1000, "negatives": 3, "per_user": 20,
                              "history_len": 10, "history_ratings": True, "item_stats": True}}],
    "methods": ["zero-shot", "sft", "prompt-facts"],
    "regimes": ["full"],
    "ks": [3],
    "shots": [SHOTS],
    "seeds": [0],
    "train": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"]},
              "data": {"max_valid_samples": 20}, "keep_last": 1, "save_every": 10},
    # one sample per forward pass, accumulated to 4 per optimizer step: no padding (padded 4-sample batches were
    # ~30 % slower per sample on 2 CPU cores)
    "sft": {"epochs": 1, "lr": 1.0e-3, "batch_size": 1, "grad_accum": 4},
    "align": {"epochs": 1, "lr": 5.0e-5, "batch_size": 1, "grad_accum": 4},  # the curve's (DMPO diverged at 5e-4)
    "eval": {},
}


def choose_dtype(dtype: str = "auto") -> str:
    """"auto": bf16 on a GPU that has it and on a CPU whose bf16 matmuls are fast (model.cpu_bf16_speedup), else
    fp32; "fp32"/"bf16" as given."""
    import torch

    from prefrec.model import cpu_bf16_speedup

    if dtype != "auto":
        return dtype
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    speedup = cpu_bf16_speedup()
    choice = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    print(f"prefrec quickstart: {choice} (this CPU's bf16 matmuls run at {speedup:.1f}x its fp32 rate; "
          f"--dtype fp32 or bf16 to choose)", file=sys.stderr)
    return choice


SMOKE_SHOTS, SMOKE_TEST = 40, 30  # the smoke run: every step of the quickstart in a few minutes, no learning


def quickstart_config(out: Path, *, n_test: int | None = None, dtype: str = "fp32", model: str = "embedded",
                      smoke: bool = False) -> dict:
    """The experiment config the quickstart runs: QUICKSTART with its folders, test limit, precision and model (any
    name load_model takes: "embedded", "gemma3-270m", a local model folder). smoke: SMOKE_SHOTS training samples
    and SMOKE_TEST test users, which exercise every step and show no learning."""
    import copy

    cfg = copy.deepcopy(QUICKSTART)
    if smoke:
        cfg["shots"], n_test = [SMOKE_SHOTS], min(n_test or SMOKE_TEST, SMOKE_TEST)
    cfg["output_dir"] = str(out)
    cfg["report_dir"] = str(out / "report")
    cfg["eval"] = {} if n_test is None else {"limit": n_test}
    # one epoch sees each sample once, so LoRA dropout regularises little and costs much: 24 % of an SFT step in
    # fp32, 29 % in bf16 (10 steps of the 1,000-sample point: 12.4 -> 9.4 s and 9.6 -> 6.8 s per step)
    cfg["train"]["lora"]["dropout"] = LORA_DROPOUT
    if dtype != "fp32":
        cfg["train"]["model"] = {"dtype": dtype}
        cfg["eval"]["dtype"] = dtype
    if model != "embedded":
        cfg["models"] = [model]
    return cfg


WORDS = {"zero-shot": "the model before training", "sft": "after SFT on the training users",
         "prompt-facts": "a logistic model of the two numbers each prompt prints (no LLM)"}


def results_table(report_json: Path) -> str:
    """The quickstart's results in plain words: test AUC per method (0.5 is chance) and what each method is."""
    groups = json.loads(report_json.read_text(encoding="utf-8")).get("groups") or []
    lines = ["Test AUC (0.5 = chance; 1 = every liked item ranked above the disliked one):"]
    for g in groups:
        auc = (g.get("metrics") or {}).get("auc") or {}
        if auc.get("mean") is not None:
            n = "/".join(map(str, g.get("n_samples") or [])) or "?"
            lines.append(f"  {g['method']:<13} {auc['mean']:.3f}   {n} test users; "
                         f"{WORDS.get(g['method'], g['method'])}")
    return "\n".join(lines)


def run_quickstart(out: str | Path = "runs/quickstart", *, n_test: int | None = None, dtype: str = "auto",
                   model: str = "embedded", smoke: bool = False) -> Path:
    """Run the quickstart grid into `out`; n_test: evaluate only the first N test users (default: all 702);
    dtype: auto | fp32 | bf16 (see choose_dtype); model: the base model; smoke: a few minutes, no learning (see
    quickstart_config)."""
    out = Path(out)
    cfg = quickstart_config(out, n_test=n_test, dtype=choose_dtype(dtype), model=model, smoke=smoke)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "experiment.yaml"
    io.write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    from prefrec.experiment import run_experiment

    t0 = time.time()
    md = run_experiment(path)
    minutes = (time.time() - t0) / 60
    print(f"\nprefrec quickstart finished in {minutes:.1f} min", file=sys.stderr)
    print(results_table(Path(md).with_suffix(".json")))  # the report's own results.json, beside results.md
    print(f"  report:       {md}")
    print(f"  plots:        {Path(md).parent / 'plots'}")
    print(f"  trained run:  {out / 'cells' / 'ml-100k'}")
    print(f"  experiment:   {path}  (re-run with: prefrec experiment {path})")
    if smoke:
        print(f"  this was the smoke run: {SMOKE_SHOTS} training samples and {SMOKE_TEST} test users exercise every "
              "step but are far too few to show learning; drop --smoke for the real quickstart")
    return Path(md)
