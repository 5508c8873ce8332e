"""What LoRA on the top N layers from the trunk cache costs in quality against LoRA on every layer, on validation, at
equal steps and at equal training time (issue #39 part 5).

    python benchmarks/trunk_quality.py --layers 4 --work /tmp/trunk-quality

Per dataset of configs/experiments/trunk-quality.yaml (ML-100K pairwise, 1,000 samples; ML-100K candidates, 333
samples; the hybrid prompt; SFT, lr 1e-3), three `prefrec experiment` calls, each alone under /tmp/torch.lock:
  all-layer   LoRA on every layer, no cache, 1 epoch (today's default);
  top-N       LoRA on the top N layers from a fresh trunk cache, 1 epoch: equal steps (and zero-shot, from the cache);
  top-N-time  the same with E epochs, E = the most whole epochs whose training time, with the cache build of the
              run above, fits in the all-layer run's training time (from the two runs' recorded timings): equal time.
Every cell's last adapter is scored once on the same 300 validation samples (test is never read; no checkpoint is
chosen, so nothing is selected on the figures compared). Each mode is compared with all-layer and with zero-shot on
the same samples: the difference of the key metric (pairwise AUC; candidates rank HR@1 and MRR) with a paired
bootstrap CI over users (1,000 resamples). Resumable: a finished call is not run again.

Writes benchmarks/results/trunk_quality.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import add_output_args, describe, result_stem  # noqa: E402
from trunk_grid import run_alone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "experiments" / "trunk-quality.yaml"
METRICS = {"pairwise": ["auc"], "candidates": ["rank_hr@1", "rank_mrr"]}


def call(label: str, mode: str, layers: int | None, epochs: int, work: Path, extra: list[str]) -> list[str]:
    """The `prefrec experiment` command line of one dataset and mode (`extra`: more --set values, for a smoke run)."""
    out = work / label / mode
    sets = [f"output_dir={out}", f"report_dir={out / 'report'}", f"sft.epochs={epochs}", *extra]
    if layers is not None:
        # the evaluation reads the same cache folder (experiment._trunk_eval)
        sets += [f"train.lora.layers={layers}", "train.trunk_cache=true",
                 f"train.trunk_cache_dir={work / label / 'trunk-cache'}"]
    only = ["--only", label, "--only", "sft"] + (["--only", "zero-shot"] if mode == f"top-{layers}" else [])
    return [sys.executable, "-m", "prefrec", "experiment", str(CONFIG), "--no-report", *only,
            *[x for s in sets for x in ("--set", s)]]


def cell_results(folder: Path) -> dict[str, tuple[dict, list[dict], dict]]:
    """{method: (results, per-sample rows, run timings)} of one call's finished cells."""
    from prefrec.results import find_results, per_sample_path, read_per_sample, read_run

    out = {}
    for path, res in find_results([folder / "cells"]) if (folder / "timing.json").is_file() else []:
        run = path.parent / "run"
        timings = read_run(run).get("timings", {}) if run.is_dir() else {}
        out[res["method"]] = (res, read_per_sample(per_sample_path(path)), timings)
    return out


def time_epochs(work: Path, label: str, layers: int) -> tuple[int, dict]:
    """E: the most whole epochs of the top-N run whose training time plus its cache build fit in the all-layer run's
    training time (at least 1), with the timings it was read from."""
    full = cell_results(work / label / "all-layer")["sft"][2]
    top = cell_results(work / label / f"top-{layers}")["sft"][2]
    budget, build, epoch = full["sft"], top.get("trunk_cache", 0.0), top["sft"]
    return max(1, math.floor((budget - build) / epoch)), {"all_layer_train_s": budget, "build_s": build,
                                                           "top_epoch_s": epoch}


def compare(work: Path, label: str, modes: list[str], task: str) -> tuple[list[dict], list[dict]]:
    """Each mode's key metrics with CIs over users, and each mode against all-layer and zero-shot (paired, same
    validation samples)."""
    from prefrec.evaluation.report import bootstrap_ci, paired_bootstrap

    cells = {}
    for mode in modes:
        for method, got in cell_results(work / label / mode).items():
            cells["zero-shot" if method == "zero-shot" else mode] = got
    rows, pairs = [], []
    for name, (res, per_sample, timings) in cells.items():
        ci = bootstrap_ci(per_sample, METRICS[task])
        rows.append({"dataset": label, "mode": name, "n": res["n_samples"], "train_s": timings.get("sft"),
                     "build_s": timings.get("trunk_cache"),
                     **{m: [round(ci[m]["value"], 4), round(ci[m]["lo"], 4), round(ci[m]["hi"], 4)]
                        for m in METRICS[task] if m in ci}})
        for other in ("all-layer", "zero-shot") if name != "zero-shot" else ():
            if other != name and other in cells:
                for m in METRICS[task]:
                    d = paired_bootstrap(per_sample, cells[other][1], m)
                    if d is not None:
                        pairs.append({"dataset": label, "a": name, "b": other, "metric": m,
                                      **{k: d[k] for k in ("diff", "lo", "hi", "p", "n")}})
    return rows, pairs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--datasets", nargs="+", default=["ml-100k-pairwise", "ml-100k-candidates"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/trunk-quality"))
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more `prefrec experiment --set` "
                    "values (a smoke run on fewer samples); the committed result uses none")
    ap.add_argument("--write-only", action="store_true", help="run nothing; write the result of the finished calls")
    add_output_args(ap, "trunk_quality")
    args = ap.parse_args(argv)
    n = args.layers
    for label in [] if args.write_only else args.datasets:
        plan = [("all-layer", None, lambda: 1), (f"top-{n}", n, lambda: 1),
                (f"top-{n}-time", n, lambda: time_epochs(args.work, label, n)[0])]
        for mode, layers, epochs in plan:
            record = args.work / label / mode / "timing.json"
            if record.is_file():
                continue  # resumable: a finished call is kept
            e = epochs()
            record.parent.mkdir(parents=True, exist_ok=True)
            timing = run_alone(call(label, mode, layers, e, args.work, args.extra), args.work / f"{label}.log")
            record.write_text(json.dumps({**timing, "epochs": e}, indent=1))
            print(label, mode, e, timing, file=sys.stderr)
    write(args)


def write(args) -> None:
    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    n, tasks = args.layers, {"ml-100k-pairwise": "pairwise", "ml-100k-candidates": "candidates"}
    modes = ["all-layer", f"top-{n}", f"top-{n}-time"]
    calls = {f"{d}/{m}": json.loads((args.work / d / m / "timing.json").read_text()) for d in args.datasets
             for m in modes if (args.work / d / m / "timing.json").is_file()}
    rows, pairs, budgets = [], [], {}
    for d in args.datasets:
        r, p = compare(args.work, d, modes, tasks[d])
        rows, pairs = rows + r, pairs + p
        if all(f"{d}/{m}" in calls for m in modes[:2]):
            budgets[d] = time_epochs(args.work, d, n)[1]
    busy = any(c["machine"]["busy"] for c in calls.values())
    stem = result_stem(args.name, busy, args.out_dir)
    write_json(stem.with_suffix(".json"), {"config": str(CONFIG.relative_to(REPO)), "layers": n, "calls": calls,
                                           "budgets": budgets, "cells": rows, "paired": pairs, **provenance()})
    write_text(stem.with_suffix(".md"), "\n".join(_markdown(args, calls, budgets, rows, pairs)) + "\n")
    print(stem.with_suffix(".md"))


def _markdown(args, calls: dict, budgets: dict, rows: list[dict], pairs: list[dict]) -> list[str]:
    machine = next(iter(calls.values()))["machine"] if calls else {}
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v else "–"  # noqa: E731
    md = ["# Top-N LoRA from the trunk cache against all-layer LoRA, on validation", "", describe(machine), "",
          f"`python benchmarks/trunk_quality.py --layers {args.layers}` on `{CONFIG.relative_to(REPO)}`: SFT, last "
          "adapter of each run, scored once on the same validation samples (n in the table; test not read). Equal-time epochs E from the "
          "recorded training times (seconds, wall, alone on the machine):", ""]
    md += [f"- {d}: all-layer training {b['all_layer_train_s']:.0f} s; top-{args.layers} cache build "
           f"{b['build_s']:.0f} s + {b['top_epoch_s']:.0f} s per epoch → E = "
           f"{calls.get(f'{d}/top-{args.layers}-time', {}).get('epochs', '–')}" for d, b in budgets.items()]
    md += ["", "| dataset | mode | epochs | n | training s | cache build s | call CPU s | metric [95 % CI over users] |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = calls.get(f"{r['dataset']}/{r['mode']}", {})
        metrics = "; ".join(f"{m} {fmt(r[m])}" for m in METRICS["pairwise"] + METRICS["candidates"] if m in r)
        md.append(f"| {r['dataset']} | {r['mode']} | {c.get('epochs', '–')} | {r['n']} | "
                  f"{r['train_s'] or 0:.0f} | {r['build_s'] or 0:.0f} | {c.get('cpu_s', '–')} | {metrics} |")
    md += ["", "Paired differences on the same validation samples (bootstrap over users, 1,000 resamples):", "",
           "| dataset | A | B | metric | A − B [95 % CI] | p |", "|---|---|---|---|---|---|"]
    md += [f"| {p['dataset']} | {p['a']} | {p['b']} | {p['metric']} | {p['diff']:+.3f} [{p['lo']:+.3f}, "
           f"{p['hi']:+.3f}] | {p['p']:.3f} |" for p in pairs]
    return md


if __name__ == "__main__":
    main()
