"""Validation with the task's metrics in one pass over the task's own trees, against the two passes it took before
(issue #40's grids: the validation of a pairwise SFT cell scored its 300 samples twice, about 40 % of the cell).

    python benchmarks/validation_pass.py --data experiments/ml1m-curve/data/ml-1m-text-title-pairwise-seed0

Two short SFT runs of the ML-1M curve's settings (embedded model, bf16, LoRA r 16 on the top 4 layers from the trunk
cache, batch 1 × 4 accumulation, AUC validation of `--valid` samples after each of `--steps` steps), alike but for
the validation: "two passes" (the stage's trees, the chosen responses only, then the task's own scoring of the
samples; recipe._task_trees forced off) and "one pass" (the task's trees, read for both). Per run: seconds per
validation (the stage's time less its optimizer steps', divided by the validations) and the logged figures, which
must agree. Build the trunk cache of these samples first (any run of the grid has), or the first run pays for it.

Writes benchmarks/results/validation_pass.json and .md.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Quiet, add_output_args, describe, result_stem, settle  # noqa: E402


def config(data: Path, out: Path, steps: int, n_valid: int) -> dict:
    return {"output_dir": str(out), "seed": 0, "progress": False, "model": {"name": "embedded", "dtype": "bf16"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "layers": 4,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
            "trunk_cache": True, "data": {"dir": str(data), "max_train_samples": 4 * steps,
                                          "max_valid_samples": n_valid},
            "best_metric": "auc", "eval_every": 1, "use_best": True, "save_every": 1000,
            "stages": [{"kind": "sft", "epochs": 1, "lr": 1e-3, "batch_size": 1, "grad_accum": 4}]}


def run(mode: str, data: Path, work: Path, steps: int, n_valid: int) -> dict:
    from prefrec.training import recipe
    from prefrec.training.config import config_from_dict, resolve_paths

    off = mock.patch.object(recipe, "_task_trees", lambda r, si: False) if mode == "two passes" else nullcontext()
    with off:
        out = recipe.train(resolve_paths(config_from_dict(config(data, work / mode.replace(" ", "-"), steps, n_valid),
                                                          "benchmark")))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((out / "run.json").read_text())
    valid = [r for r in rows if r["split"] == "valid"]
    stepping = sum(r.get("seconds", 0.0) for r in rows if r["split"] == "train")
    return {"mode": mode, "validations": len(valid), "stage_s": round(info["timings"]["sft"], 1),
            "steps_s": round(stepping, 1), "s_per_validation": round((info["timings"]["sft"] - stepping) / len(valid), 1),
            "valid": [{k: r[k] for k in ("step", "loss", "chosen_logp", "auc")} for r in valid],
            "trunk_cache": info.get("trunk_cache")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared pairwise folder (train/valid.jsonl)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--valid", type=int, default=300)
    add_output_args(ap, "validation_pass")
    a = ap.parse_args()
    settle()
    quiet = Quiet()
    with tempfile.TemporaryDirectory() as tmp:
        got = [run(mode, a.data, Path(tmp), a.steps, a.valid) for mode in ("two passes", "one pass")]
    record = quiet.finish()
    worst = {k: max(abs(two[k] - one[k]) for two, one in zip(got[0]["valid"], got[1]["valid"]))
             for k in ("loss", "chosen_logp", "auc")}
    result = {"runs": got, "largest_difference": worst, "machine": record,
              "config": {"data": str(a.data), "steps": a.steps, "valid": a.valid}}
    stem = result_stem(a.name, record["busy"], a.out_dir)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Validation in one pass over the task's trees, against two passes", "", describe(record), "",
             f"`python benchmarks/validation_pass.py --data {a.data}` ({a.valid} validation samples, {a.steps} "
             "SFT steps of the ML-1M curve's settings, a validation after each).", "",
             "| validation | validations | seconds per validation | stage s | optimizer steps s |", "|---|---|---|---|---|"]
    lines += [f"| {g['mode']} | {g['validations']} | {g['s_per_validation']} | {g['stage_s']} | {g['steps_s']} |"
              for g in got]
    lines += ["", "Largest difference of a logged validation figure between the two: "
              + ", ".join(f"{k} {v:.2g}" for k, v in worst.items()) + " (bf16: the chosen responses sit in trees of "
              "another shape; tests/test_train.py checks the two agree to 1e-6 in fp32).", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
