"""Benchmark: one training step with LoRA on all layers (today's default), on the top N layers, and on the top N
layers from the trunk cache; and what building the cache costs.

    python benchmarks/trunk_cache.py                     # fp32 and bf16, N in 2 4 6 8 12 all, 4 timed samples
    python benchmarks/trunk_cache.py --dtypes bf16 --layers 4 8 --samples 2 --name trunk_cache-quick
    python benchmarks/trunk_cache.py --device cuda --dtypes bf16 --name trunk_cache-gpu   # benchmarks/gpu.sh

On the embedded SmolLM2-135M (30 decoder layers), LoRA r=16 on attention + MLP (as benchmarks/train_throughput.py),
real ML-100K pairwise samples with the hybrid prompt (the quickstart's prompt: the user's ratings, each candidate's
mean rating and rater count), k = 3. One sample per step (an optimizer step on one tree: sft = its chosen responses;
dmpo-k3 = chosen against the 3 rejected, reference log-probs given). For each dtype, stage and N:
  all-layer   LoRA on every layer, full forward + backward (N = "all", no cache): today's default
  top-N       LoRA on the top N layers, full forward; the backward stops below them by itself
  cached      the same model, the bottom L − N layers read from the trunk cache (prefrec.scoring.trunk)
  build       seconds per sample to compute and store the cache (one forward of the bottom layers, no grad)
Fields per row: n_layers, mode, s_per_sample (median of the timed steps; the first step is a warm-up),
pairs_per_cpu_hour (3 pairs per sample, wall hours at --threads), vs_full (the all-layer step / this step), and on
the all-layer rows mfu: the step's useful FLOPs (benchmarks/flops.py: 2 x forward of the tree) per second over the
matmul rate measured on the same device and dtype (on a CPU: the fraction of its ceiling; on a GPU: MFU against
the achieved, not the datasheet, rate). The top-N and cached rows do less work for the same update, so their gain
is vs_full, not an MFU.
The machine's load is recorded (benchmarks/quiet.py); a busy machine writes a draft, never the result.

Writes benchmarks/results/trunk_cache.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import matmul_gflops, tree_forward_flops  # noqa: E402
from quiet import Quiet, add_output_args, describe, result_stem, settle  # noqa: E402
from train_throughput import LORA, hybrid_samples, time_stage  # noqa: E402

STAGES = (("sft", "chosen"), ("dmpo", "all"))


def timed_steps(model, trees, kind: str) -> float:
    """Median seconds of one optimizer step per tree (the first is a warm-up)."""
    return statistics.median(time_stage(model, trees, kind))


def rows_for(base, trees: dict, n_layers: int | None, total: int, cache_root: Path) -> list[dict]:
    """The rows of one N (None = all layers): the step without and (top-N only) with the cache, and the build."""
    from prefrec.model import add_lora
    from prefrec.scoring import trunk

    lm = add_lora(copy.deepcopy(base), **LORA, layers=n_layers)
    lm.train()
    label = n_layers or "all"
    out = []
    for kind, _ in STAGES:
        s = timed_steps(lm, trees[kind], kind)
        out.append({"stage": kind, "n_layers": label, "mode": "all-layer" if n_layers is None else "top-N",
                    "s_per_sample": s})
    if n_layers is None:
        return out
    cache = trunk.TrunkCache(cache_root, lm, total - n_layers)
    for kind, _ in STAGES:
        t0 = time.perf_counter()
        cache.ensure(trees[kind])
        build = (time.perf_counter() - t0) / len(trees[kind])
        trunk.attach(lm, cache)
        s = timed_steps(lm, trees[kind], kind)
        trunk.attach(lm, None)
        out += [{"stage": kind, "n_layers": label, "mode": "cached", "s_per_sample": s},
                {"stage": kind, "n_layers": label, "mode": "build", "s_per_sample": build}]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4, help="timed samples per row (plus one warm-up)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--layers", nargs="+", type=int, default=[2, 4, 6, 8, 12])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_output_args(ap, "trunk_cache")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settle()
    quiet = Quiet()
    from prefrec.model import load_model
    from prefrec.scoring.encoding import encode_sample
    from prefrec.scoring.trunk import decoder_layers
    from prefrec.training.batches import with_k_negatives

    train, _ = hybrid_samples(args.samples + 1)
    rows = []
    for dtype in args.dtypes:
        base, tok = load_model("embedded", dtype=dtype, device=args.device)
        ceiling = matmul_gflops(args.device, dtype)
        total = len(decoder_layers(base))
        trees = {kind: [encode_sample(tok, with_k_negatives(s, 3), which=which) for s in train]
                 for kind, which in STAGES}
        with tempfile.TemporaryDirectory(prefix="prefrec-trunk-bench-") as root:
            for n in [None, *args.layers]:
                for r in rows_for(base, trees, n, total, Path(root)):
                    if r["mode"] == "all-layer":  # timed trees only: the first is the warm-up
                        useful = 2 * statistics.mean(tree_forward_flops(base, t) for t in trees[r["stage"]][1:])
                        r["mfu"] = round(useful / r["s_per_sample"] / (ceiling * 1e9), 4)
                    rows.append({"dtype": dtype, "device": args.device, "matmul_gflops": round(ceiling), **r})
                    print(rows[-1], file=sys.stderr)
    tokens = statistics.mean(t.n_tokens() for t in trees["dmpo"][1:])
    write(_with_ratios(rows), args, quiet.finish(), total, tokens)


def _with_ratios(rows: list[dict]) -> list[dict]:
    full = {(r["dtype"], r["stage"]): r["s_per_sample"] for r in rows if r["mode"] == "all-layer"}
    for r in rows:
        r["s_per_sample"] = round(r["s_per_sample"], 4)
        r["pairs_per_cpu_hour"] = round(3600 * 3 / r["s_per_sample"]) if r["mode"] != "build" else None
        r["vs_full"] = round(full[(r["dtype"], r["stage"])] / r["s_per_sample"], 2) if r["mode"] != "build" else None
    return rows


def write(rows: list[dict], args, machine: dict, total: int, tokens: float) -> None:
    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    stem = result_stem(args.name, machine["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), {"model": "embedded", "decoder_layers": total, "threads": args.threads,
                                           "cpu_count": os.cpu_count(), "timed_samples": args.samples,
                                           "dmpo_tokens_per_sample": round(tokens, 1), "machine": machine,
                                           "rows": rows, **provenance()})
    md = ["# Top-N LoRA and the trunk cache: one training step", "", describe(machine), "",
          f"`python benchmarks/trunk_cache.py --threads {args.threads} --samples {args.samples} --dtypes "
          f"{' '.join(args.dtypes)} --layers {' '.join(map(str, args.layers))}`; embedded SmolLM2-135M ({total} "
          f"decoder layers), LoRA r=16 on attention + MLP, ML-100K pairwise hybrid prompts, k = 3 "
          f"({tokens:.0f} tokens per DMPO tree); one sample per step, median of {args.samples} steps. `build`: "
          f"seconds per sample to compute and store the cache, once per sample for every later step.", "",
          "| device | dtype | stage | N (top layers) | mode | s / sample | pairs / hour | vs all-layer | MFU |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pairs = f"{r['pairs_per_cpu_hour']:,}" if r["pairs_per_cpu_hour"] else "-"
        md.append(f"| {r['device']} | {r['dtype']} | {r['stage']} | {r['n_layers']} | {r['mode']} | "
                  f"{r['s_per_sample']} | {pairs} | {r['vs_full'] if r['vs_full'] is not None else '-'} | "
                  f"{r.get('mfu', '-')} |")
    write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
