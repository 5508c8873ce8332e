"""Benchmark: a whole experiment grid with LoRA on every layer (today) against LoRA on the top N layers from the
trunk cache, measured end to end with `prefrec experiment`, and what each grid's cells reach on validation.

    python benchmarks/trunk_grid.py --layers 4 8 --work /tmp/trunk-grid

The grid is configs/experiments/trunk-grid.yaml (ML-100K pairwise, hybrid prompt, 100 training samples, 2 epochs;
SFT, DPO and DMPO k = 3, evaluated with zero-shot on the 100 validation samples), run once per learning-rate pair
(`--lrs SFT:ALIGN ...`; zero-shot only with the first), per mode: `all-layer` (no lora.layers, no cache: today) and
`top-N` (lora.layers N, a fresh trunk cache folder, so building it is counted). Each `prefrec experiment` call runs
alone under /tmp/torch.lock (other jobs wait) after the load average has settled, and its quietness is recorded
(benchmarks/quiet.py); any busy call makes the whole result a draft.

Fields: per mode, wall_s and cpu_s (user + system of the experiment processes, summed over its calls),
`grid_speedup` = all-layer cpu_s / top-N cpu_s; per cell, validation AUC with its bootstrap CI over users (the
grid's own report, written beside the result).

Writes benchmarks/results/trunk_grid.json and .md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Quiet, add_output_args, describe, result_stem, settle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "experiments" / "trunk-grid.yaml"


def run_alone(cmd: list[str], log: Path) -> dict:
    """Run cmd under the shared torch lock, quiet-checked; its wall and CPU seconds."""
    with open("/tmp/torch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        settle()
        quiet, before = Quiet(), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(log, "a") as f:
            proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = quiet.finish()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "machine": machine}


def grid_calls(mode: str, layers: int | None, lrs: list[str], work: Path) -> list[list[str]]:
    """The `prefrec experiment` command lines of one mode: one per learning-rate pair."""
    calls = []
    for i, pair in enumerate(lrs):
        sft_lr, align_lr = pair.split(":")
        out = work / mode / f"lr{i}"
        sets = [f"output_dir={out}", f"report_dir={out / 'report'}", f"sft.lr={sft_lr}", f"align.lr={align_lr}",
                f"methods={'[zero-shot, sft, dpo, dmpo]' if i == 0 else '[sft, dpo, dmpo]'}"]
        if layers is not None:
            sets += [f"train.lora.layers={layers}", f"train.trunk_cache_dir={work / mode / 'trunk-cache'}"]
        calls.append([sys.executable, "-m", "prefrec", "experiment", str(CONFIG), *[x for s in sets for x in ("--set", s)]])
    return calls


def cells(mode: str, lrs: list[str], work: Path) -> list[dict]:
    """Every cell's validation AUC with its bootstrap CI over users, from each grid report's results.json."""
    out = []
    for i, pair in enumerate(lrs):
        report = work / mode / f"lr{i}" / "report" / "results.json"
        for r in json.loads(report.read_text())["runs"] if report.is_file() else []:
            ci = (r.get("ci95") or {}).get("auc") or {}
            out.append({"mode": mode, "lr": pair if r["method"] != "zero-shot" else "-", "method": r["method"],
                        "n": r["n_samples"], "auc": r["metrics"].get("auc"),
                        "auc_ci": [round(ci["lo"], 3), round(ci["hi"], 3)] if ci else None})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--lrs", nargs="+", default=["1.0e-3:5.0e-5", "3.0e-4:1.0e-5"], help="SFT_LR:ALIGN_LR pairs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/trunk-grid"))
    ap.add_argument("--modes", nargs="+", default=None, help="run only these modes (all-layer, top-N); the others "
                    "are read from an earlier run in --work")
    add_output_args(ap, "trunk_grid")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    modes = {"all-layer": None, **{f"top-{n}": n for n in args.layers}}
    for mode, layers in modes.items():
        record = args.work / mode / "timing.json"
        if args.modes is not None and mode not in args.modes or record.is_file():
            continue  # resumable: a finished mode's timing is kept
        shutil.rmtree(args.work / mode, ignore_errors=True)
        (args.work / mode).mkdir(parents=True)
        calls = [run_alone(c, args.work / mode / "log.txt") for c in grid_calls(mode, layers, args.lrs, args.work)]
        record.write_text(json.dumps(calls, indent=1))
        print(mode, calls, file=sys.stderr)
    write(args, modes)


def write(args, modes: dict) -> None:
    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    timing = {m: json.loads((args.work / m / "timing.json").read_text()) for m in modes
              if (args.work / m / "timing.json").is_file()}
    summary = {m: {"wall_s": round(sum(c["wall_s"] for c in calls), 1), "cpu_s": round(sum(c["cpu_s"] for c in calls), 1),
                   "busy": any(c["machine"]["busy"] for c in calls)} for m, calls in timing.items()}
    full = summary.get("all-layer", {}).get("cpu_s")
    for m, s in summary.items():
        s["grid_speedup"] = round(full / s["cpu_s"], 2) if full else None
    busy = any(s["busy"] for s in summary.values())
    stem = result_stem(args.name, busy, args.out_dir)
    rows = [c for m in timing for c in cells(m, args.lrs, args.work)]
    machine = next(iter(timing.values()))[0]["machine"] if timing else {}
    write_json(stem.with_suffix(".json"), {"config": str(CONFIG.relative_to(REPO)), "lrs": args.lrs,
                                           "modes": summary, "calls": timing, "cells": rows, **provenance()})
    md = ["# The trunk cache on a whole grid, end to end", "", describe(machine) if machine else "", "",
          f"`python benchmarks/trunk_grid.py --layers {' '.join(map(str, args.layers))} --lrs {' '.join(args.lrs)}`"
          f" on `{CONFIG.relative_to(REPO)}`: SFT, DPO and DMPO (k = 3) x {len(args.lrs)} learning-rate pairs, "
          f"2 epochs on 100 ML-100K samples, every cell and zero-shot evaluated on the 100 validation samples.", "",
          "| mode | wall s | CPU s | grid_speedup (CPU) |", "|---|---|---|---|"]
    md += [f"| {m} | {s['wall_s']:,} | {s['cpu_s']:,} | {s['grid_speedup']} |" for m, s in summary.items()]
    md += ["", "Validation AUC per cell (bootstrap 95 % CI over users):", "",
           "| mode | lr (SFT:align) | method | n | AUC | CI |", "|---|---|---|---|---|---|"]
    md += [f"| {c['mode']} | {c['lr']} | {c['method']} | {c['n']} | {c['auc']:.3f} | {c['auc_ci']} |" for c in rows
           if c["auc"] is not None]
    write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
