"""Benchmark: the report's bootstrap on a pairwise and a candidates cell of the ML-1M curve's size.

    python benchmarks/report_bootstrap.py                      # writes benchmarks/results/report_bootstrap.*
    PYTHONPATH=/path/to/older/src python benchmarks/report_bootstrap.py --name report_bootstrap-before

Synthetic per-sample rows like a pairwise cell's: 1,000 users, one sample each with 3 comparisons (k = 3 negatives),
two runs scored on the same samples; and candidates rows like the candidates point's: 1,000 users, 20 candidates
each. Times, with 1,000 resamples over users each: `bootstrap_ci` (the CI of one run's AUC and pairwise accuracy;
candidates: HR@1 and MRR) and `paired_bootstrap` (one run against another on AUC; candidates: HR@1), each the median
of --repeats runs. A report of the curve calls these (and the same metric families inside the beyond-the-floor test)
a few times per cell, so they set how long `cells.sh` spends in reports. The machine's load is recorded
(benchmarks/quiet.py); the prefrec commit measured is recorded too, so an older checkout's figure sits beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Quiet, add_output_args, describe, result_stem  # noqa: E402


def rows(rng: np.random.Generator, n_users: int, k: int, shift: float) -> list[dict]:
    """Per-sample rows of one run: s_first − s_second ~ N(shift, 1) per comparison."""
    return [{"id": f"s{u}", "user": f"u{u}", "s_first": (rng.normal(shift, 1.0, k)).tolist(), "s_second": [0.0] * k}
            for u in range(n_users)]


def candidate_rows(rng: np.random.Generator, n_users: int, shift: float) -> list[dict]:
    """Per-sample rows of a candidates run: 20 scores ~ N(0, 1), the target's shifted by `shift`."""
    out = []
    for u in range(n_users):
        scores, t = rng.normal(size=20), int(rng.integers(0, 20))
        scores[t] += shift
        out.append({"id": f"s{u}", "user": f"u{u}", "target_index": t, "rank_scores": scores.tolist()})
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    add_output_args(ap, "report_bootstrap")
    args = ap.parse_args()

    from prefrec.evaluation.report import bootstrap_ci, paired_bootstrap
    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    rng = np.random.default_rng(0)
    a, b = rows(rng, args.users, args.k, 0.3), rows(rng, args.users, args.k, 0.0)
    quiet = Quiet()
    ci_s = timed(lambda: bootstrap_ci(a, ["auc", "pairwise_accuracy"], n_boot=args.n_boot), args.repeats)
    paired_s = timed(lambda: paired_bootstrap(a, b, "auc", n_boot=args.n_boot), args.repeats)
    ca, cb = candidate_rows(rng, args.users, 1.0), candidate_rows(rng, args.users, 0.5)
    cand_ci_s = timed(lambda: bootstrap_ci(ca, ["rank_hr@1", "rank_mrr"], n_boot=args.n_boot), args.repeats)
    cand_paired_s = timed(lambda: paired_bootstrap(ca, cb, "rank_hr@1", n_boot=args.n_boot), args.repeats)
    record = quiet.finish()
    ci = bootstrap_ci(a, ["auc"], n_boot=args.n_boot)["auc"]
    result = {"users": args.users, "k": args.k, "n_boot": args.n_boot, "repeats": args.repeats,
              "bootstrap_ci_s": round(ci_s, 3), "paired_bootstrap_s": round(paired_s, 3),
              "candidates_bootstrap_ci_s": round(cand_ci_s, 3),
              "candidates_paired_bootstrap_s": round(cand_paired_s, 3),
              "auc": ci["value"], "auc_lo": ci["lo"], "auc_hi": ci["hi"], "quiet": record,
              "provenance": provenance()}
    stem = result_stem(args.name, record["busy"], args.out_dir)
    write_json(stem.with_suffix(".json"), result)
    commit = (result["provenance"].get("git_commit") or "?")[:12]
    md = [f"# The report's bootstrap ({args.users} users × {args.k} comparisons, {args.n_boot} resamples)", "",
          describe(record), "", f"prefrec commit {commit}; median of {args.repeats}.", "",
          "| what | seconds |", "|---|---|", f"| bootstrap_ci (AUC, pairwise accuracy) | {ci_s:.2f} |",
          f"| paired_bootstrap (AUC) | {paired_s:.2f} |",
          f"| candidates (20 each): bootstrap_ci (HR@1, MRR) | {cand_ci_s:.2f} |",
          f"| candidates: paired_bootstrap (HR@1) | {cand_paired_s:.2f} |", "",
          f"AUC {ci['value']:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}] (the same for every commit: the same draws).", ""]
    write_text(stem.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
