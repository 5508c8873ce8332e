"""What a pairwise LLM cell decided by: the order the titles were shown in, or the prompt's item facts?

    python docs/results/learning-curve/diagnose.py EXPERIMENT_OUTPUT_DIR [CELL ...]

For every test comparison of the learning curve's ML-100K data (EXPERIMENT_OUTPUT_DIR/data/ml-100k-pairwise-seedN/
test.jsonl, N the cell's seed) and each cell's per_sample.jsonl (s_first = score of the correct ordering, s_second = the wrong one):
  picks shown-first   how often the model prefers the ordering that starts with the title shown first in the question
  acc | pos first     pairwise accuracy when the positive was shown first, and when it was shown second
  corr margin, Δmean  Pearson correlation between the model's margin (s_first − s_second) and the difference of the
                      two items' mean ratings printed in the prompt (positive minus negative)
  corr margin, Δlog n the same with the difference of log(rater count) printed in the prompt: popularity
A model that always answers with the first-shown title scores 1.0 / ~1.0 / ~0.0; one that reads the mean ratings
has a positive correlation whatever the order. Comparisons whose question does not parse into two titles with a mean
rating each are left out (counted).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

FACT = re.compile(r'"(.+?)" \(mean rating ([0-9.]+) from (\d+) users?\)')


def comparisons(test_path: Path) -> dict[str, list[tuple[bool, float, float] | None]]:
    """sample id -> per comparison (positive shown first?, positive mean − negative mean, positive log raters −
    negative log raters), or None if unparsable."""
    out = {}
    for line in test_path.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        rows = []
        for c in s["comparisons"]:
            facts = FACT.findall(c["question"])
            if len(facts) != 2:
                rows.append(None)
                continue
            (t1, m1, n1), (t2, m2, n2) = facts
            first = c["chosen"].startswith(t1 + ",")
            sign = 1.0 if first else -1.0
            rows.append((first, sign * (float(m1) - float(m2)), sign * (math.log(int(n1)) - math.log(int(n2)))))
        out[s["id"]] = rows
    return out


def diagnose(cell_dir: Path, facts: dict) -> dict:
    margins, first, delta, pop, skipped = [], [], [], [], 0
    for line in (cell_dir / "per_sample.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        for a, b, f in zip(r["s_first"], r["s_second"], facts[r["id"]]):
            if f is None:
                skipped += 1
                continue
            margins.append(a - b)
            first.append(f[0])
            delta.append(f[1])
            pop.append(f[2])
    correct = [m > 0 for m in margins]
    picks_first = sum(c == f for c, f in zip(correct, first)) / len(margins)
    acc_first = [c for c, f in zip(correct, first) if f]
    acc_second = [c for c, f in zip(correct, first) if not f]
    return {"n": len(margins), "skipped": skipped, "picks_shown_first": picks_first,
            "acc_pos_first": sum(acc_first) / len(acc_first), "acc_pos_second": sum(acc_second) / len(acc_second),
            "corr_margin_delta_mean": statistics.correlation(margins, delta),
            "corr_margin_delta_log_raters": statistics.correlation(margins, pop)}


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    facts = {}  # seed -> comparisons of that seed's test prompts (each seed samples its own negatives and orders)
    cells = argv[1:] or sorted(p.name for p in (root / "cells" / "ml-100k").iterdir()
                               if (p / "per_sample.jsonl").is_file() and (p / "run").exists()
                               or p.name.startswith("zero-shot"))
    print("| cell | comparisons | picks shown-first | acc, positive first | acc, positive second | "
          "corr(margin, Δ mean rating) | corr(margin, Δ log raters) |")
    print("|---|---|---|---|---|---|---|")
    for name in cells:
        seed = re.search(r"seed(\d+)$", name).group(1)
        if seed not in facts:
            facts[seed] = comparisons(root / "data" / f"ml-100k-pairwise-seed{seed}" / "test.jsonl")
        d = diagnose(root / "cells" / "ml-100k" / name, facts[seed])
        print(f"| {name} | {d['n']} | {d['picks_shown_first']:.3f} | {d['acc_pos_first']:.3f} | "
              f"{d['acc_pos_second']:.3f} | {d['corr_margin_delta_mean']:+.3f} | "
              f"{d['corr_margin_delta_log_raters']:+.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
