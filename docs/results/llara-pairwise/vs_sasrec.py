"""Each LLM cell of this report against SASRec (whose item table the hybrid cell reads) and against the other LLM
cells, test AUC on the same 2,106 comparisons: prefrec's paired bootstrap that resamples users
(prefrec.evaluation.report.paired_bootstrap, 1,000 resamples), read off the committed per-sample files.

    python docs/results/llara-pairwise/vs_sasrec.py      # prints the table in vs_sasrec.md and writes it
"""

from pathlib import Path

from prefrec.evaluation.report import paired_bootstrap
from prefrec.results import read_per_sample

CELLS = Path(__file__).parent / "cells" / "ml-100k-pairwise"
PAIRS = [("sft-var-text-shots600-seed0", "sasrec-full-seed0"),
         ("sft-var-hybrid-shots600-seed0", "sasrec-full-seed0"),
         ("zero-shot-seed0", "sasrec-full-seed0"),
         ("sft-var-hybrid-shots600-seed0", "sft-var-text-shots600-seed0"),
         ("sft-var-text-shots600-seed0", "zero-shot-seed0"),
         ("sft-var-hybrid-shots600-seed0", "zero-shot-seed0")]


def main() -> None:
    md = ["| A | B | AUC A | AUC B | A − B [95 % CI] | p | users |", "|---|---|---|---|---|---|---|"]
    for a, b in PAIRS:
        pa, pb = CELLS / a / "per_sample.jsonl", CELLS / b / "per_sample.jsonl"
        if not (pa.is_file() and pb.is_file()):
            md.append(f"| {a} | {b} | – | – | not run | – | – |")
            continue
        rows_a = read_per_sample(pa)
        t = paired_bootstrap(rows_a, read_per_sample(pb), "auc", n_boot=1000, seed=0)
        md.append(f"| {a} | {b} | {t['a']:.3f} | {t['b']:.3f} | {t['diff']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}] "
                  f"| {t['p']:.3f} | {len({r['user'] for r in rows_a})} |")
    (Path(__file__).parent / "vs_sasrec.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
