"""Benchmark: training throughput of the learning-curve regime against the CPU's fp32 matmul ceiling (issue 12).

    python benchmarks/train_throughput.py                  # 2 threads, 8 timed samples per stage
    python benchmarks/train_throughput.py --threads 1 --samples 4
    python benchmarks/train_throughput.py --dtype bf16 --name train_throughput-bf16   # AMX / AVX-512 BF16 CPUs
    python benchmarks/train_throughput.py --model gemma3-270m --name train_throughput-gemma3

Measures, in one process on the embedded SmolLM2-135M (fp32, or bf16 weights with --dtype bf16; LoRA r=16 on attention + MLP, as
configs/experiments/learning-curve.yaml), on real ML-100K hybrid-prompt pairwise samples (k = 3, history 10):
  ceiling   the matmul rate of this CPU in --dtype at --threads (torch.mm of 2048 x 2048, median of 5)
  sft       one sample per step: packed forward + backward + AdamW step (the chosen responses of 3 comparisons)
  dmpo      the same with chosen and rejected responses, reference log-probs cached (prefrec's default)
  score     forward-only scoring of a test sample (both orderings of 3 comparisons), as evaluation does
Reported per stage: seconds per sample, tokens per second, training pairs per CPU-hour (wall hours at --threads),
and the achieved rate as a fraction of the ceiling, with useful FLOPs counted by benchmarks/flops.py (forward over
the packed tree; a LoRA training step = 2 x forward, no weight gradients for the frozen base). The machine's load is
recorded (benchmarks/quiet.py); a run on a busy machine is written as a draft, never as the final result.

Writes benchmarks/results/train_throughput.json and .md (or *-draft.* when the machine was busy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import matmul_gflops, tree_forward_flops  # noqa: E402
from quiet import Quiet, add_output_args, describe, result_stem  # noqa: E402

LORA = dict(r=16, alpha=32, dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


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
    from prefrec.scoring.packing import response_logps
    from prefrec.training.losses import PreferenceBatch, dmpo_loss, sft_loss

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
                batch = PreferenceBatch(c, r, torch.ones_like(c), torch.ones_like(r), c.detach(), r.detach())
                loss = dmpo_loss(batch, 0.1)[0].sum()
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
    ap.add_argument("--model", default="embedded", help="the base model (embedded, gemma3-270m, a local folder)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="the frozen base model's weights (LoRA adapters and log-probs stay fp32)")
    add_output_args(ap, "train_throughput")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quiet = Quiet()
    from prefrec.model import add_lora, load_model
    from prefrec.scoring.encoding import encode_sample

    train, test = hybrid_samples(args.samples + 1)
    lm, tok = load_model(args.model, dtype=args.dtype, device="cpu")
    lm = add_lora(lm, **LORA)
    lm.train()
    ceiling = matmul_gflops(dtype=args.dtype)
    rows = {}
    for kind, samples, which in (("sft", train, "chosen"), ("dmpo", train, "all"), ("score", test, "all")):
        trees = [encode_sample(tok, s, which=which) for s in samples]
        secs = time_stage(lm, trees, kind)
        tokens = statistics.mean(t.n_tokens() for t in trees[1:])
        flops = statistics.mean(tree_forward_flops(lm, t) for t in trees[1:]) * (1 if kind == "score" else 2)
        s = statistics.median(secs)
        pairs = statistics.mean(len(x.comparisons) for x in samples[1:])
        rows[kind] = {"seconds_per_sample": round(s, 3), "tokens_per_sample": round(tokens, 1),
                      "tokens_per_s": round(tokens / s, 1), "pairs_per_sample": pairs,
                      "pairs_per_cpu_hour": round(3600 * pairs / s), "gflops_per_s": round(flops / s / 1e9, 1),
                      "fraction_of_ceiling": round(flops / s / 1e9 / ceiling, 3), "timed_samples": len(secs)}
        print(kind, rows[kind], file=sys.stderr)
    write(rows, ceiling, args, quiet.finish())


def write(rows: dict, ceiling: float, args, machine: dict) -> None:
    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    stem = result_stem(args.name, machine["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "threads": args.threads, "dtype": args.dtype, "cpu_count": os.cpu_count(), "matmul_gflops": round(ceiling, 1),
              "machine": machine, "stages": rows, **provenance()}
    write_json(stem.with_suffix(".json"), result)
    md = ["# Training throughput of the learning-curve regime", "", describe(machine), "",
          f"`python benchmarks/train_throughput.py --model {args.model} --threads {args.threads} --samples "
          f"{args.samples} --dtype {args.dtype}`; {args.threads} thread(s) of {os.cpu_count()} cores; {args.dtype} matmul ceiling "
          f"{ceiling:.1f} GFLOP/s.", "",
          "| stage | s / sample | tokens / sample | tokens / s | pairs / CPU-hour | GFLOP/s | of ceiling |",
          "|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        md.append(f"| {k} | {r['seconds_per_sample']} | {r['tokens_per_sample']} | {r['tokens_per_s']} | "
                  f"{r['pairs_per_cpu_hour']:,} | {r['gflops_per_s']} | {r['fraction_of_ceiling']:.0%} |")
    write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
