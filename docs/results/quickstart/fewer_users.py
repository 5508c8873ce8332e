"""Would the quickstart still show learning if it evaluated only the issue's minimum of 700 test comparisons?

    python docs/results/quickstart/fewer_users.py [CELLS]

default: docs/results/quickstart/cells/ml-100k. For each seed, SFT − zero-shot AUC on the first N test users
(N = 234 users x 3 comparisons = 702 comparisons, what `prefrec quickstart --n-test 234` would evaluate; a third of
the evaluation time) and on all 702 users, with the paired bootstrap of `prefrec report` (2,000 resamples). The
per-sample scores are those of the committed cells: nothing is re-run. Prints a Markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefrec.evaluation.report import paired_bootstrap
from prefrec.results import read_per_sample

HERE = Path(__file__).resolve().parent


def main(cells: Path) -> None:
    print("| seed | test users | comparisons | zero-shot AUC | SFT AUC | SFT − zero-shot [95 % CI] | p |")
    print("|---|---|---|---|---|---|---|")
    for sft in sorted(cells.glob("sft-shots1000-seed*")):
        seed = sft.name.rsplit("seed", 1)[1]
        a = read_per_sample(sft / "per_sample.jsonl")
        b = read_per_sample(cells / f"zero-shot-seed{seed}" / "per_sample.jsonl")
        for n in (234, len(a)):
            t = paired_bootstrap(a[:n], b[:n], "auc", n_boot=2000, seed=0)
            comparisons = sum(len(r["s_first"]) for r in a[:n])
            print(f"| {seed} | {t['n']} | {comparisons:,} | {t['b']:.4f} | {t['a']:.4f} | "
                  f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}] | {t['p']:.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "cells" / "ml-100k")
