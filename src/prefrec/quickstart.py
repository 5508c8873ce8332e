"""The quickstart: ML-100K -> SFT on the embedded model -> evaluation against zero-shot on the whole test split -> report.

It is one point of the learning curve (configs/experiments/learning-curve.yaml, docs/results/learning-curve): the
cheapest regime in which a fine-tuned 135M model has something to learn on 2 CPU cores, not the papers' few-shot
protocol (whose every CPU-sized run is at chance, docs/results/README.md). The regime, in full:
- data: ML-100K, DMPO pairwise protocol, k = 3 comparisons per sample sharing one history of 10 titles; every
  non-test user trains (180 train + 20 valid users; the 702 test users are the default split's), up to 20 samples
  per user along the timeline, the first 333 samples (≈ 1,000 pairs) used;
- hybrid prompt: the user's own ratings beside the history titles, and each candidate's mean rating and rater count
  from the other non-test users (docs/data.md, "More signal per sample");
- SFT: one epoch, LoRA r = 16 on attention and MLP, lr 1e-3, 4 samples per optimizer step;
- evaluation: all 702 test users x 3 comparisons, zero-shot and SFT on the same samples, with a paired bootstrap
  test in the report.
DMPO and DPO are in the learning curve; they do not fit the quickstart's 45 minutes on 2 cores. The settings equal
the learning curve's (tests/test_quickstart.py checks it), so the quickstart's cells are the curve's cells.
It runs through exactly the code that `prefrec experiment` uses; a second run skips what is already finished.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from prefrec import io

SHOTS = 333  # training samples (3 pairs each)

QUICKSTART = {
    "name": "quickstart",
    "datasets": [{"label": "ml-100k", "dataset": "ml-100k", "task": "pairwise",
                  "prepare": {"n_train": 180, "n_valid": 20, "n_test": 1000, "negatives": 3, "per_user": 20,
                              "history_len": 10, "history_ratings": True, "item_stats": True}}],
    "methods": ["zero-shot", "sft"],
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


def run_quickstart(out: str | Path = "runs/quickstart", *, n_test: int | None = None) -> Path:
    """Run the quickstart grid into `out`; n_test: evaluate only the first N test users (default: all 702)."""
    out = Path(out)
    cfg = dict(QUICKSTART)
    cfg["output_dir"] = str(out)
    cfg["report_dir"] = str(out / "report")
    cfg["eval"] = {} if n_test is None else {"limit": n_test}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "experiment.yaml"
    io.write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    from prefrec.experiment import run_experiment

    t0 = time.time()
    md = run_experiment(path)
    minutes = (time.time() - t0) / 60
    print(f"\nprefrec quickstart finished in {minutes:.1f} min", file=sys.stderr)
    print(f"  report:       {md}")
    print(f"  plots:        {Path(md).parent / 'plots'}")
    print(f"  trained run:  {out / 'cells' / 'ml-100k'}")
    print(f"  experiment:   {path}  (re-run with: prefrec experiment {path})")
    return Path(md)
