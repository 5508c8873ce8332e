"""Each LLM cell of this report against SASRec (whose item table the hybrid cells read), HR@1 on the same test
samples: a paired bootstrap that resamples users (prefrec.evaluation.stats), read off the committed per-sample files.

    python docs/results/llara-candidates/vs_sasrec.py      # prints the table in vs_sasrec.md and writes it
"""

import json
from pathlib import Path

import numpy as np

from prefrec.evaluation.stats import paired_user_bootstrap

HERE = Path(__file__).parent
CELLS = HERE / "cells" / "ml-100k"


def rows(cell: str, key: str) -> dict[str, dict]:
    out = {}
    for line in (CELLS / cell / "per_sample.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["id"]] = {"user": r["user"], "hit": float(int(np.argmax(r[key])) == r["target_index"])}
    return out


def hr1(rs: list[dict]) -> float:
    return float(np.mean([r["hit"] for r in rs]))


def main() -> None:
    sasrec = rows("sasrec-full-seed0", "scores")
    md = ["| LLM cell (rank HR@1) | its HR@1 | SASRec HR@1 | LLM − SASRec [95 % CI] | p | users |",
          "|---|---|---|---|---|---|"]
    for cell in ("zero-shot-seed0", "sft-var-text-seed0", "sft-var-hybrid-seed0", "sdpo-var-text-k3-beta1-seed0",
                 "sdpo-var-hybrid-k3-beta1-seed0"):
        llm = rows(cell, "rank_scores")
        ids = [i for i in llm if i in sasrec]
        a, b = [llm[i] for i in ids], [sasrec[i] for i in ids]
        t = paired_user_bootstrap(a, b, [r["user"] for r in a], hr1)
        md.append(f"| {cell} | {t['a']:.3f} | {t['b']:.3f} | {t['diff']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}] | "
                  f"{t['p']:.3f} | {t['n_users']} |")
    (HERE / "vs_sasrec.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
