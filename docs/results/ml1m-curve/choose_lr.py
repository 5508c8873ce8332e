"""Choose the SFT learning rate of the ML-1M curve on the VALIDATION split (its choose step at commit ad55328).

    python docs/results/ml1m-curve/choose_lr.py EXPERIMENT_DIR LR [LR ...]   # prints the chosen lr

For each lr, the 1,000-sample SFT cell of `EXPERIMENT_DIR/lr-LR` (its run.json: steps, best validated step) and an
evaluation of its adapter on the validation split: `EXPERIMENT_DIR/valid/lr-LR/` when there is one (an evaluation
re-run after a scoring fix), else the cell's own `eval/`. The zero-shot model on the same validation samples is
`EXPERIMENT_DIR/valid/zero-shot/`. Each AUC gets a 95 % bootstrap CI that resamples users, and its paired difference
from zero-shot a p-value (the report's bootstrap_ci and paired_bootstrap, 1,000 resamples). Writes
docs/results/ml1m-curve/lr.md and lr.json beside this file and prints the lr with the highest validation AUC. No
test sample is read.
"""

import json
import sys
from pathlib import Path

from prefrec.evaluation.report import bootstrap_ci, paired_bootstrap


def cell(exp: Path, lr: str) -> Path:
    runs = sorted((exp / f"lr-{lr}" / "cells" / "ml-1m-hybrid-letter").glob("sft-*shots1000*"))
    if len(runs) != 1:
        raise SystemExit(f"{exp}/lr-{lr}: expected one 1,000-sample SFT cell, found {[str(r) for r in runs]}")
    return runs[0]


def evaluation(folder: Path) -> list[dict]:
    res = json.loads((folder / "results.json").read_text())
    if res["split"] != "valid":
        raise SystemExit(f"{folder}: evaluated on {res['split']}, not on the validation split")
    return [json.loads(line) for line in (folder / "per_sample.jsonl").read_text().splitlines() if line.strip()]


def auc(rows: list[dict]) -> tuple[float, float, float]:
    """AUC with its 95 % CI over user resamples (the report's bootstrap)."""
    ci = bootstrap_ci(rows, ["auc"])["auc"]
    return ci["value"], ci["lo"], ci["hi"]


def row(exp: Path, lr: str, zero: list[dict]) -> dict:
    c = cell(exp, lr)
    run = json.loads((c / "run" / "run.json").read_text())
    folder = exp / "valid" / f"lr-{lr}" if (exp / "valid" / f"lr-{lr}").exists() else c / "eval"
    rows = evaluation(folder)
    if [r["id"] for r in rows] != [r["id"] for r in zero]:
        raise SystemExit(f"{folder}: not the zero-shot evaluation's validation samples")
    value, lo, hi = auc(rows)
    vs = paired_bootstrap(rows, zero, "auc")
    return {"lr": lr, "steps": run["stage_info"]["sft"]["steps"], "best_step": run["best"]["step"],
            "valid_auc": value, "lo": lo, "hi": hi, "vs_zero_shot": vs["diff"], "vs_lo": vs["lo"],
            "vs_hi": vs["hi"], "p": vs["p"], "n_comparisons": sum(len(r["s_first"]) for r in rows),
            "n_users": len({r["user"] for r in rows}), "seconds": run["timings"].get("sft"),
            "evaluation": str(folder.relative_to(exp))}


def main(exp: str, *lrs: str) -> None:
    exp = Path(exp)
    zero = evaluation(exp / "valid" / "zero-shot")
    rows = [row(exp, lr, zero) for lr in lrs]
    best = max(rows, key=lambda r: r["valid_auc"])
    zval, zlo, zhi = auc(zero)
    md = ["# ML-1M curve: the SFT learning rate, chosen on validation", "",
          "SFT on 1,000 samples of `ml-1m-hybrid-letter` (3,000 pairs), one run per lr, its checkpoint chosen by "
          "validation AUC every 50 steps (use_best), evaluated on the validation split "
          f"({rows[0]['n_users']} users x 3 = {rows[0]['n_comparisons']} comparisons); 95 % CIs resample users. "
          "No test sample was read.", "",
          "| lr | steps | best step | valid AUC [95 % CI] | vs zero-shot [95 % CI], p | train s |",
          "|---|---|---|---|---|---|",
          f"| zero-shot | – | – | {zval:.3f} [{zlo:.3f}, {zhi:.3f}] | | |"]
    for r in rows:
        md.append(f"| {r['lr']} | {r['steps']} | {r['best_step']} | "
                  f"{r['valid_auc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] | "
                  f"{r['vs_zero_shot']:+.3f} [{r['vs_lo']:+.3f}, {r['vs_hi']:+.3f}], p = {r['p']:.3f} | "
                  f"{r['seconds'] or 0:.0f} |")
    md += ["", f"Highest validation AUC: lr {best['lr']}."]
    (Path(__file__).parent / "lr.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (Path(__file__).parent / "lr.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(best["lr"])


if __name__ == "__main__":
    main(*sys.argv[1:])
