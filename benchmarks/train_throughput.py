"""Benchmark: training throughput of the learning-curve regime against the CPU's fp32 matmul ceiling (issue 12).

    python benchmarks/train_throughput.py                  # 2 threads, 8 timed samples per stage
    python benchmarks/train_throughput.py --threads 1 --samples 4

Measures, in one process on the embedded SmolLM2-135M (fp32, LoRA r=16 on attention + MLP, as
configs/experiments/learning-curve.yaml), on real ML-100K hybrid-prompt pairwise samples (k = 3, history 10):
  ceiling   the fp32 matmul rate of this CPU at --threads (torch.mm of 2048 x 2048, median of 5)
  sft       one sample per step: packed forward + backward + AdamW step (the chosen responses of 3 comparisons)
  dmpo      the same with chosen and rejected responses, reference log-probs cached (prefrec's default)
  score     forward-only scoring of a test sample (both orderings of 3 comparisons), as evaluation does
Reported per stage: seconds per sample, tokens per second, training pairs per CPU-hour (wall hours at --threads),
and the achieved rate as a fraction of the ceiling, counting 2 x (non-embedding parameters) FLOPs per token forward
and 3x that for a training step (forward + the backward pass's input gradients; LoRA's weight gradients are
negligible), plus the LM head at response positions only. The machine's load average is recorded before and after;
a run on a busy machine (load average above --max-load per core) is written as a draft, never as the final result.

Writes benchmarks/results/train_throughput.json and .md (or *-draft.* when the machine was busy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
LORA = dict(r=16, alpha=32, dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def hybrid_samples(n: int):
    """The first n training and test samples of the learning curve's ML-100K pairwise dataset."""
    from prefrec.data.fetch import ensure_dataset
    from prefrec.data.prepare import prepare
    from prefrec.samples import read_jsonl

    out = Path(tempfile.mkdtemp(prefix="prefrec-throughput-"))
    prepare("ml-100k", ensure_dataset("ml-100k"), "pairwise", out, negatives=3, n_train=180, n_valid=20,
            n_test=1000, per_user=20, history_len=10, history_ratings=True, item_stats=True, warn=lambda m: None)
    return read_jsonl(out / "train.jsonl")[:n], read_jsonl(out / "test.jsonl")[:n]


def time_stage(model, trees, kind: str) -> list[float]:
    """Seconds per sample of one optimizer step per tree (the first step is a warm-up, not counted)."""
    from prefrec.losses import PREFERENCE_LOSSES, sft_loss
    from prefrec.packing import response_logps

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for i, tree in enumerate(trees):
        t0 = time.perf_counter()
        if kind == "score":
            with torch.inference_mode():
                response_logps(model, [tree])
        else:
            sc = response_logps(model, [tree], per_token=kind == "sft")
            if kind == "sft":
                loss = sft_loss([x for x, (_, _, j) in zip(sc.token_logps, sc.index) if j == 0])
            else:
                c, r = sc.chosen_rejected()
                loss = PREFERENCE_LOSSES["dmpo"](c, r, c.detach(), r.detach(), 0.1)[0].sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="timed samples per stage (plus one warm-up)")
    ap.add_argument("--max-load", type=float, default=0.5, help="load average per core above which it is a draft")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    from prefrec.model import add_lora, load_model
    from prefrec.packing import encode_sample

    train, test = hybrid_samples(args.samples + 1)
    lm, tok = load_model("embedded", dtype="fp32", device="cpu")
    lm = add_lora(lm, **LORA)
    lm.train()
    cfg = lm.config
    n_embed = cfg.vocab_size * cfg.hidden_size
    n_body = sum(p.numel() for n, p in lm.named_parameters() if "lora_" not in n) - n_embed
    ceiling = matmul_gflops()
    rows = {}
    for kind, samples, which in (("sft", train, "chosen"), ("dmpo", train, "all"), ("score", test, "all")):
        trees = [encode_sample(tok, s, which=which) for s in samples]
        secs = time_stage(lm, trees, kind)
        tokens = statistics.mean(t.n_tokens() for t in trees[1:])
        resp = statistics.mean(sum(len(r) for b in t.branches for r in b.responses) for t in trees[1:])
        flops = 2 * n_body * tokens + 2 * n_embed * resp  # forward, LM head at response positions only
        flops *= 1 if kind == "score" else 3
        s = statistics.median(secs)
        pairs = statistics.mean(len(x.comparisons) for x in samples[1:])
        rows[kind] = {"seconds_per_sample": round(s, 3), "tokens_per_sample": round(tokens, 1),
                      "tokens_per_s": round(tokens / s, 1), "pairs_per_sample": pairs,
                      "pairs_per_cpu_hour": round(3600 * pairs / s), "gflops_per_s": round(flops / s / 1e9, 1),
                      "fraction_of_ceiling": round(flops / s / 1e9 / ceiling, 3), "timed_samples": len(secs)}
        print(kind, rows[kind], file=sys.stderr)
    load_after = os.getloadavg()
    busy = max(load_before[0], load_after[0]) > args.max_load * os.cpu_count()
    write(rows, ceiling, args, load_before, load_after, busy)


def write(rows: dict, ceiling: float, args, load_before, load_after, busy: bool) -> None:
    from prefrec.provenance import provenance
    from prefrec.samples import write_json_atomic

    name = "train_throughput" + ("-draft" if busy else "")
    result = {"threads": args.threads, "cpu_count": os.cpu_count(), "matmul_gflops": round(ceiling, 1),
              "load_average_before": load_before, "load_average_after": load_after, "busy": busy,
              "stages": rows, **provenance()}
    write_json_atomic(RESULTS / f"{name}.json", result)
    md = [f"# Training throughput of the learning-curve regime ({'DRAFT: busy machine' if busy else 'quiet machine'})",
          "", f"`python benchmarks/train_throughput.py --threads {args.threads} --samples {args.samples}`; "
          f"{args.threads} thread(s) of {os.cpu_count()} cores; fp32 matmul ceiling {ceiling:.1f} GFLOP/s; load "
          f"average before {load_before[0]:.2f}, after {load_after[0]:.2f}.", "",
          "| stage | s / sample | tokens / sample | tokens / s | pairs / CPU-hour | GFLOP/s | of ceiling |",
          "|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        md.append(f"| {k} | {r['seconds_per_sample']} | {r['tokens_per_sample']} | {r['tokens_per_s']} | "
                  f"{r['pairs_per_cpu_hour']:,} | {r['gflops_per_s']} | {r['fraction_of_ceiling']:.0%} |")
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(RESULTS / f"{name}.md")


if __name__ == "__main__":
    main()
