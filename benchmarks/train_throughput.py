"""Benchmark: training throughput of the learning-curve regime, against a plain causal step over the same tokens.

    python benchmarks/train_throughput.py                  # 2 threads, 8 timed samples per row
    python benchmarks/train_throughput.py --dtype bf16 --name train_throughput-bf16   # AVX-512 BF16 / AMX CPUs
    python benchmarks/train_throughput.py --model gemma3-270m --name train_throughput-gemma3
    python benchmarks/train_throughput.py --attention masked --name train_throughput-masked   # the old attention

Measures, in one process on the embedded SmolLM2-135M (fp32, or bf16 weights under autocast with --dtype bf16; LoRA
r=16 on attention + MLP, as configs/experiments/learning-curve.yaml), on real ML-100K hybrid-prompt samples:
  ceiling   the matmul rate of this CPU in --dtype at --threads (torch.mm of 512 x 512, median of 5)
  sft       pairwise samples (k = 3, history 10): packed forward + backward + AdamW step of the chosen responses
  dmpo-k3   the same samples with chosen and rejected responses, reference log-probs cached (prefrec's default)
  dmpo-k15  candidates samples (20 titles shown) with the target and 15 rejected titles, reference cached
  score     forward-only scoring of a pairwise test sample (both orderings of 3 comparisons), as evaluation does
and, for each row in the same run, a **plain causal step** of the same length: one sequence of as many tokens as
the packed tree, no mask (SDPA's causal path), the LM head at as many positions as the tree has response tokens,
forward + backward + AdamW (forward only for score). `vs_plain_causal` = prefrec's time / the plain step's: how much
the tree's masks, gathers and bookkeeping cost over a causal LM step of the same tokens.
Reported per row: seconds per sample, tokens per second, training pairs per CPU-hour (wall hours at --threads),
the achieved rate as a fraction of the ceiling (useful FLOPs by benchmarks/flops.py: forward over the packed tree; a
LoRA training step = 2 x forward, no weight gradients for the frozen base), and vs_plain_causal. The machine's load
is recorded (benchmarks/quiet.py); a run on a busy machine is written as a draft, never as the final result.

Writes benchmarks/results/train_throughput.json and .md (or *-draft.* when the machine was busy).
"""

from __future__ import annotations

import argparse
import contextlib
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


def candidate_samples(n: int):
    """The first n training samples of the ML-100K candidates task (20 titles shown), hybrid prompt."""
    from prefrec.data.fetch import ensure_dataset
    from prefrec.data.prepare import prepare
    from prefrec.samples import read_jsonl

    out = Path(tempfile.mkdtemp(prefix="prefrec-throughput-cand-"))
    prepare("ml-100k", ensure_dataset("ml-100k"), "candidates", out, negatives=15, n_train=200, n_valid=20,
            n_test=100, history_ratings=True, item_stats=True, warn=lambda m: None)
    return read_jsonl(out / "train.jsonl")[:n]


def _step(model, opt, loss) -> None:
    loss.backward()
    with torch.profiler.record_function("optimizer"):  # a named scope for benchmarks/profile_steps.py
        opt.step()
        opt.zero_grad(set_to_none=True)


def one_step(model, opt, tree, kind: str) -> None:
    """One optimizer step on a tree (sft: its chosen responses; dmpo: chosen against rejected, reference cached),
    or one forward-only scoring pass (score)."""
    from prefrec.scoring.packing import response_logps
    from prefrec.training.losses import PreferenceBatch, dmpo_loss, sft_loss

    if kind == "score":
        with torch.inference_mode():
            response_logps(model, [tree])
    elif kind == "sft":
        sc = response_logps(model, [tree], per_token=True)
        _step(model, opt, sft_loss([x for x, (_, _, j) in zip(sc.token_logps, sc.index) if j == 0]))
    else:
        c, r = response_logps(model, [tree]).chosen_rejected()
        batch = PreferenceBatch(c, r, torch.ones_like(c), torch.ones_like(r), c.detach(), r.detach())
        _step(model, opt, dmpo_loss(batch, 0.1)[0].sum())


def time_stage(model, trees, kind: str) -> list[float]:
    """Seconds per sample of one optimizer step per tree (the first step is a warm-up, not counted)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for i, tree in enumerate(trees):
        t0 = time.perf_counter()
        one_step(model, opt, tree, kind)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # a GPU step is asynchronous: its time is when its kernels are done
        if i:
            times.append(time.perf_counter() - t0)
    return times


def time_plain(model, trees, kind: str) -> list[float]:
    """The plain causal step of each tree's length: random token ids, the LM head at the tree's number of response
    tokens (the last ones), mean log-prob of their next tokens as the loss."""
    from prefrec.scoring.packing import _head_logits, _token_logps, base_model, mixed_precision

    base = base_model(model)
    device, dtype = next(base.parameters()).device, base.get_input_embeddings().weight.dtype
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    times = []
    for i, tree in enumerate(trees):
        n = tree.n_tokens()
        heads = sum(len(r) for b in tree.branches for r in (b.responses if kind != "sft" else b.responses[:1]))
        ids = torch.randint(0, base.config.vocab_size, (1, n + 1), generator=g)
        t0 = time.perf_counter()
        ctx = torch.inference_mode() if kind == "score" else contextlib.nullcontext()
        with ctx, mixed_precision(model, device, dtype):
            hidden = base.get_decoder()(input_ids=ids[:, :n], use_cache=False).last_hidden_state[0, n - heads:]
            loss = -_token_logps(_head_logits(base, hidden), ids[0, n - heads + 1:]).mean()
        if kind != "score":
            _step(model, opt, loss)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def measure(lm, tok, kind: str, samples, which: str, k: int | None, ceiling: float) -> dict:
    from prefrec.scoring.encoding import encode_sample
    from prefrec.training.batches import with_k_negatives

    trees = [encode_sample(tok, with_k_negatives(s, k) if k else s, which=which) for s in samples]
    s = statistics.median(time_stage(lm, trees, kind))
    plain = statistics.median(time_plain(lm, trees, kind))
    tokens = statistics.mean(t.n_tokens() for t in trees[1:])
    flops = statistics.mean(tree_forward_flops(lm, t) for t in trees[1:]) * (1 if kind == "score" else 2)
    pairs = statistics.mean(min(k or 99, sum(len(c.rejected) for c in x.comparisons)) for x in samples[1:])
    return {"seconds_per_sample": round(s, 3), "plain_causal_seconds": round(plain, 3),
            "vs_plain_causal": round(s / plain, 3), "tokens_per_sample": round(tokens, 1),
            "tokens_per_s": round(tokens / s, 1), "pairs_per_sample": pairs,
            "pairs_per_cpu_hour": round(3600 * pairs / s), "gflops_per_s": round(flops / s / 1e9, 1),
            "fraction_of_ceiling": round(flops / s / 1e9 / ceiling, 3), "timed_samples": len(trees) - 1}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="timed samples per row (plus one warm-up)")
    ap.add_argument("--model", default="embedded", help="the base model (embedded, gemma3-270m, a local folder)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="the frozen base model's weights (LoRA adapters and log-probs stay fp32)")
    ap.add_argument("--attention", default="split", choices=["split", "masked"],
                    help="split: causal prefix + masked tail (prefrec's default); masked: one call with the tree mask")
    add_output_args(ap, "train_throughput")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quiet = Quiet()
    from prefrec.model import add_lora, load_model
    from prefrec.scoring import packing

    packing.SPLIT_ATTENTION = args.attention == "split"
    train, test = hybrid_samples(args.samples + 1)
    cands = candidate_samples(args.samples + 1)
    lm, tok = load_model(args.model, dtype=args.dtype, device="cpu")
    lm = add_lora(lm, **LORA)
    lm.train()
    ceiling = matmul_gflops(dtype=args.dtype)
    rows = {}
    for name, kind, samples, which, k in (("sft", "sft", train, "chosen", None), ("dmpo-k3", "dmpo", train, "all", 3),
                                          ("dmpo-k15", "dmpo", cands, "all", 15), ("score", "score", test, "all", None)):
        rows[name] = measure(lm, tok, kind, samples, which, k, ceiling)
        print(name, rows[name], file=sys.stderr)
    write(rows, ceiling, args, quiet.finish())


def write(rows: dict, ceiling: float, args, machine: dict) -> None:
    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    stem = result_stem(args.name, machine["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "threads": args.threads, "dtype": args.dtype, "attention": args.attention, "cpu_count": os.cpu_count(), "matmul_gflops": round(ceiling, 1),
              "machine": machine, "stages": rows, **provenance()}
    write_json(stem.with_suffix(".json"), result)
    md = ["# Training throughput of the learning-curve regime", "", describe(machine), "",
          f"`python benchmarks/train_throughput.py --model {args.model} --threads {args.threads} --samples "
          f"{args.samples} --dtype {args.dtype} --attention {args.attention}`; {args.threads} thread(s) of "
          f"{os.cpu_count()} cores; {args.dtype} matmul ceiling {ceiling:.1f} GFLOP/s.", "",
          "| row | s / sample | plain causal s | vs plain causal | tokens / sample | tokens / s | pairs / CPU-hour | "
          "GFLOP/s | of ceiling |", "|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        md.append(f"| {k} | {r['seconds_per_sample']} | {r['plain_causal_seconds']} | {r['vs_plain_causal']} | "
                  f"{r['tokens_per_sample']} | {r['tokens_per_s']} | {r['pairs_per_cpu_hour']:,} | "
                  f"{r['gflops_per_s']} | {r['fraction_of_ceiling']:.0%} |")
    write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
