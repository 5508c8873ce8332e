"""Did bf16 change what the model decides? The quickstart's bf16 cells against the learning curve's fp32 cells.

    python docs/results/quickstart/precision.py [BF16_CELLS FP32_CELLS]

defaults: docs/results/quickstart/cells/ml-100k and docs/results/learning-curve/cells/ml-100k. For every cell present
in both folders (same name: same method, shots and seed, hence the same prepared test samples), on the comparisons
both evaluated:
  agree        share of test comparisons where both precisions prefer the same ordering (s_first > s_second)
  |Δmargin|    mean absolute difference of the margin s_first − s_second (nats) between the two precisions
  AUC          bf16 minus fp32, with the paired bootstrap of `prefrec report` (1,000 resamples, same samples)
Prints a Markdown table.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from prefrec.evaluation.report import paired_bootstrap
from prefrec.results import read_per_sample

HERE = Path(__file__).resolve().parent


def margins(rows: list[dict]) -> dict[tuple[str, int], float]:
    return {(r["id"], i): a - b for r in rows for i, (a, b) in enumerate(zip(r["s_first"], r["s_second"]))}


def compare(bf16_cell: Path, fp32_cell: Path) -> str:
    a, b = read_per_sample(bf16_cell / "per_sample.jsonl"), read_per_sample(fp32_cell / "per_sample.jsonl")
    ma, mb = margins(a), margins(b)
    common = [k for k in ma if k in mb]
    agree = statistics.mean((ma[k] > 0) == (mb[k] > 0) for k in common)
    gap = statistics.mean(abs(ma[k] - mb[k]) for k in common)
    t = paired_bootstrap(a, b, "auc", n_boot=1000, seed=0)
    return (f"| {bf16_cell.name} | {len(common)} | {agree:.3f} | {gap:.3f} | {t['a']:.4f} | {t['b']:.4f} | "
            f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}] | {t['p']:.2f} |")


def main(argv: list[str]) -> None:
    bf16_dir = Path(argv[0]) if argv else HERE / "cells" / "ml-100k"
    fp32_dir = Path(argv[1]) if len(argv) > 1 else HERE.parent / "learning-curve" / "cells" / "ml-100k"
    print("| cell | comparisons | agree | mean abs Δmargin (nats) | AUC bf16 | AUC fp32 | bf16 − fp32 [95 % CI] | p |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in sorted(bf16_dir.iterdir()):
        if (fp32_dir / cell.name / "per_sample.jsonl").is_file() and (cell / "per_sample.jsonl").is_file():
            print(compare(cell, fp32_dir / cell.name))


if __name__ == "__main__":
    main(sys.argv[1:])
