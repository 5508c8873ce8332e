"""This grid's cells against the ML-1M curve's (../ml1m-curve), AUC on the same 3,000 test comparisons of the same
1,000 users (the two grids prepare byte-identical samples from the same seed): a paired bootstrap that resamples
users (prefrec.evaluation.report.paired_bootstrap, 1,000 resamples), read off the committed per-sample files.

    python docs/results/ml1m-curve-schedule/compare.py      # prints the table in compare.md and writes it
"""

from pathlib import Path

from prefrec.evaluation.report import paired_bootstrap
from prefrec.results import read_per_sample

HERE = Path(__file__).parent
MINE = HERE / "cells" / "ml-1m-text-title"
CURVE = HERE.parent / "ml1m-curve" / "cells" / "ml-1m-text-title"
# this grid's cells (folder, shown name), then the curve's it is compared with
CELLS = [(MINE / "sft-shots10000-seed0", "SFT 10,000, whole schedule"),
         (MINE / "dmpo-k3-shots10000-beta0.1-seed0", "SFT + DMPO 10,000, whole schedule"),
         (MINE / "dpo-k1-shots10000-beta0.1-seed0", "SFT + DPO 10,000, whole schedule")]
OTHERS = [(CURVE / "zero-shot-seed0", "zero-shot"),
          (CURVE / "sft-shots1000-seed0", "SFT 1,000"),
          (CURVE / "sft-shots3000-seed0", "SFT 3,000"),
          (CURVE / "dmpo-k3-shots3000-beta0.1-seed0", "SFT + DMPO 3,000"),
          (CURVE / "sft-shots10000-seed0", "SFT 10,000, stopped early at step 700"),
          (CURVE / "item-prior-full-seed0", "item-prior (full)")]


def _fmt(t: dict) -> str:
    return f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}], p = {t['p']:.3f}"


def table() -> str:
    """One line per (this grid's finished cell, cell of either grid before it): A, B, A − B [CI], p."""
    lines = ["| A | B | AUC A | AUC B | A − B [95 % CI], p |", "|---|---|---|---|---|"]
    finished = [(f, name) for f, name in CELLS if (f / "per_sample.jsonl").is_file()]
    for i, (fa, name_a) in enumerate(finished):
        rows_a = read_per_sample(fa / "per_sample.jsonl")
        for fb, name_b in OTHERS + finished[:i]:
            t = paired_bootstrap(rows_a, read_per_sample(fb / "per_sample.jsonl"), "auc", n_boot=1000, seed=0)
            lines.append(f"| {name_a} | {name_b} | {t['a']:.4f} | {t['b']:.4f} | {_fmt(t)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = table()
    print(text, end="")
    (HERE / "compare.md").write_text(text, encoding="utf-8")
