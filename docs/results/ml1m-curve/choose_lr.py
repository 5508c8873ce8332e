"""Choose the SFT learning rate of the ML-1M curve on the VALIDATION split (scripts/ml1m-curve.sh choose).

    python docs/results/ml1m-curve/choose_lr.py EXPERIMENT_DIR LR [LR ...]   # prints the chosen lr

Reads, for each lr, the 1,000-sample SFT cell of `EXPERIMENT_DIR/lr-LR`: its run.json (the validation AUC of the
best checkpoint, kept by use_best) and its evaluation on the validation split (results.json, split "valid").
Writes docs/results/ml1m-curve/lr.md (the table) beside this file and prints the lr with the highest validation
AUC. No test sample is read.
"""

import json
import sys
from pathlib import Path


def cell(exp: Path, lr: str) -> Path:
    runs = sorted((exp / f"lr-{lr}" / "cells" / "ml-1m-hybrid-letter").glob("sft-*shots1000*"))
    if len(runs) != 1:
        raise SystemExit(f"{exp}/lr-{lr}: expected one 1,000-sample SFT cell, found {[str(r) for r in runs]}")
    return runs[0]


def main(exp: str, *lrs: str) -> None:
    rows = []
    for lr in lrs:
        c = cell(Path(exp), lr)
        run = json.loads((c / "run" / "run.json").read_text())
        res = json.loads((c / "eval" / "results.json").read_text())
        if res["split"] != "valid":
            raise SystemExit(f"{c}: evaluated on {res['split']}, not on the validation split")
        rows.append({"lr": lr, "best_step": run["best"]["step"], "best_valid_auc": run["best"]["value"],
                     "valid_auc": res["metrics"]["auc"], "valid_accuracy": res["metrics"]["pairwise_accuracy"],
                     "n": res["n_samples"], "early_stop": (run["stage_info"]["sft"].get("early_stop") or {}).get("step"),
                     "steps": run["stage_info"]["sft"]["steps"], "seconds": run["timings"].get("sft")})
    best = max(rows, key=lambda r: r["valid_auc"])
    md = ["# ML-1M curve: the SFT learning rate, chosen on validation", "",
          "`bash scripts/ml1m-curve.sh lr` then `choose`: SFT on 1,000 samples of `ml-1m-hybrid-letter` (3,000 pairs), "
          "each lr one run, its checkpoint chosen by validation AUC every 50 steps (use_best), then evaluated on the "
          "validation split (100 users x 3 comparisons). No test sample was read.", "",
          "| lr | steps | early stop at | best step | valid AUC at best step | valid AUC (eval) | valid accuracy | train s |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['lr']} | {r['steps']} | {r['early_stop'] or '–'} | {r['best_step']} | "
                  f"{r['best_valid_auc']:.4f} | {r['valid_auc']:.4f} | {r['valid_accuracy']:.4f} | "
                  f"{r['seconds'] or 0:.0f} |")
    md += ["", f"Chosen: lr {best['lr']} (the highest validation AUC)."]
    (Path(__file__).parent / "lr.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (Path(__file__).parent / "lr.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(best["lr"])


if __name__ == "__main__":
    main(*sys.argv[1:])
