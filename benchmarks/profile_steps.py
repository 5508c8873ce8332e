"""Benchmark: where a training or scoring step's time goes (torch.profiler), by kind of work.

    python benchmarks/profile_steps.py                       # fp32 and bf16, 2 threads, 3 profiled steps per row
    python benchmarks/profile_steps.py --dtypes bf16 --steps 5

The rows of benchmarks/train_throughput.py (SFT, DMPO at k = 3 and 15, scoring; the embedded model with LoRA r = 16
on attention + MLP, real ML-100K hybrid-prompt samples), each run for one warm-up step and then --steps profiled
steps. Every profiled operator's *self* CPU time (so nothing is counted twice) goes into one bucket:
  collation    encoding the sample into its tree (tokenizer, masks), inside the step's "collation" scope
  optimizer    everything inside AdamW's step and zero_grad (train_throughput's "optimizer" scope)
  attention    scaled-dot-product attention kernels, forward and backward
  matmul-base  matrix products of the frozen base model and the LM head
  matmul-lora  matrix products with a dimension equal to the LoRA rank (the adapters' A and B)
  elementwise  everything else: norms, activations, casts, copies, gathers, log-softmax, autograd bookkeeping
  outside      wall time in no operator: Python between the operators (the step's wall time minus the above)
Shares are of the step's wall time; `profiled s / step` is the wall time per step under the profiler (slower than
unprofiled: compare shares, not times, with train_throughput). The machine's load is recorded (benchmarks/quiet.py).

Writes benchmarks/results/profile_steps.json and .md (or *-draft.* when the machine was busy).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Quiet, add_output_args, describe, result_stem  # noqa: E402
from train_throughput import LORA, candidate_samples, hybrid_samples, one_step  # noqa: E402

BUCKETS = ("collation", "optimizer", "attention", "matmul-base", "matmul-lora", "elementwise", "outside")
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")


def step(model, opt, tok, sample, kind: str, which: str, k: int | None) -> None:
    """train_throughput's step, with the sample's encoding in a named "collation" scope."""
    from prefrec.scoring.encoding import encode_sample
    from prefrec.training.batches import with_k_negatives

    with record_function("collation"):
        tree = encode_sample(tok, with_k_negatives(sample, k) if k else sample, which=which)
    one_step(model, opt, tree, kind)


def bucket(event, scope: str | None, rank: int) -> str:
    """The bucket of one profiled operator: its enclosing phase first, then its name (and shapes for matmuls)."""
    if scope:
        return scope
    name = event.name
    if "attention" in name or "scaled_dot_product" in name:
        return "attention"
    if name in MATMULS:
        shapes = [d for s in (event.input_shapes or []) if s for d in s]
        return "matmul-lora" if rank in shapes else "matmul-base"
    return "elementwise"


def shares(prof, rank: int) -> dict[str, float]:
    """Self CPU seconds per bucket, each operator placed in the phase ("collation", "optimizer") it started in."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    phases = [(e.time_range.start, e.time_range.end, e.name) for e in events if e.name in ("collation", "optimizer")]
    out = dict.fromkeys(BUCKETS[:-1], 0.0)
    for e in events:  # a phase's own self time is its Python and tokenizer work: that phase's too
        scope = next((n for a, b, n in phases if a <= e.time_range.start < b), None)
        out[bucket(e, scope, rank)] += e.self_cpu_time_total / 1e6
    return out


def profile_row(model, tok, samples, kind: str, which: str, k: int | None, steps: int) -> dict:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step(model, opt, tok, samples[0], kind, which, k)  # warm-up, not profiled
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for s in samples[1:steps + 1]:
            step(model, opt, tok, s, kind, which, k)
        wall = (time.perf_counter() - t0) / steps
    sec = shares(prof, LORA["r"])
    sec["outside"] = max(0.0, wall * steps - sum(sec.values()))
    total = sum(sec.values())
    return {"profiled_seconds_per_step": round(wall, 3), "self_seconds_per_step": round(total / steps, 3),
            "share": {b: round(v / total, 3) for b, v in sec.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per row (after one warm-up)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    add_output_args(ap, "profile_steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quiet = Quiet()
    from prefrec.model import add_lora, load_model

    train, test = hybrid_samples(args.steps + 1)
    cands = candidate_samples(args.steps + 1)
    rows = {}
    for dtype in args.dtypes:
        lm, tok = load_model("embedded", dtype=dtype, device="cpu")
        lm = add_lora(lm, **LORA)
        lm.train()
        for name, kind, samples, which, k in (("sft", "sft", train, "chosen", None),
                                              ("dmpo-k3", "dmpo", train, "all", 3),
                                              ("dmpo-k15", "dmpo", cands, "all", 15),
                                              ("score", "score", test, "all", None)):
            rows[f"{dtype} {name}"] = profile_row(lm, tok, samples, kind, which, k, args.steps)
            print(dtype, name, rows[f"{dtype} {name}"], file=sys.stderr)
    write(rows, args, quiet.finish())


def write(rows: dict, args, machine: dict) -> None:
    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    stem = result_stem(args.name, machine["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), {"threads": args.threads, "steps": args.steps, "cpu_count": os.cpu_count(),
                                           "machine": machine, "rows": rows, **provenance()})
    md = ["# Where a step's time goes (torch.profiler, self CPU time by kind of work)", "", describe(machine), "",
          (f"`python benchmarks/profile_steps.py --threads {args.threads} --steps {args.steps} --dtypes "
           f"{' '.join(args.dtypes)}`; {args.threads} thread(s) of {os.cpu_count()} cores; embedded model, LoRA "
           f"r = {LORA['r']} on attention + MLP."), "",
          "| row | profiled s / step | " + " | ".join(BUCKETS) + " |", "|---|---|" + "---|" * len(BUCKETS)]
    for k, r in rows.items():
        md.append(f"| {k} | {r['profiled_seconds_per_step']} | "
                  + " | ".join(f"{r['share'][b]:.0%}" for b in BUCKETS) + " |")
    write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
