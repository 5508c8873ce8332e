"""Benchmark: prefrec's preference training step beside TRL's DPOTrainer step, interleaved in one process (issue 18).

    pip install -e '.[bench]'                    # TRL: a benchmark peer only, never a runtime need of prefrec
    python benchmarks/vs_trl.py                  # k = 1 and 15, cached reference and in-step reference, 5 repeats
    python benchmarks/vs_trl.py --ks 1 --modes cached --repeats 5

The same example for both (benchmarks/packing.py's: a chat-templated movie-history prompt of about 400 tokens and
k + 1 film titles, the first chosen), the same model (the embedded SmolLM2-135M-Instruct), the same LoRA (r = 8,
alpha = 16, dropout 0, q/k/v/o), dtype, threads and AdamW learning rate. Per configuration both sides take one
warm-up step, then the timed steps alternate TRL, prefrec, TRL, prefrec, ... so a drifting machine load hits both
alike; the figure is the median.

  TRL      DPOTrainer (loss_type sigmoid, beta 0.1), one optimizer step on a batch of k rows (prompt, chosen,
           rejected_j): TRL has no multi-negative loss, so for k > 1 the peer trains k pairwise rows, as the DMPO
           code does (`--trl-micro-batch M`: M rows per forward, gradients accumulated over the k, still one
           optimizer step). Its own collator, `training_step` (forward + backward) and optimizer. Activation checkpointing
           off (TRL's default turns it on, which trades time for memory; prefrec's default is off; `--trl-checkpointing`
           adds TRL's default as a second peer).
  prefrec  one packed tree (prompt once, k + 1 responses), prefrec.scoring.packing.response_logps, DPO at k = 1, DMPO at
           k > 1, backward, AdamW step.
  modes    cached = reference log-probs computed once before the steps (prefrec's default; TRL's
           precompute_ref_log_probs=True); ref = the reference pass (adapter disabled, no grad) inside every step
           (TRL's default).

It also measures the fp32 matmul ceiling (benchmarks/flops.py) before and after, and reports each side's useful
FLOP rate as a fraction of it. The machine's load is recorded (benchmarks/quiet.py); a busy run is written as
vs_trl-draft.*, never as the final vs_trl.*.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from flops import forward_flops, matmul_gflops, tree_forward_flops  # noqa: E402
from packing import sample_texts  # noqa: E402
from quiet import Quiet, add_output_args, describe, result_stem  # noqa: E402

LORA = dict(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
TARGETS = {1: 3.0, 15: 10.0}  # issue 18: prefrec / TRL speed-up goals


def trl_fast_settings() -> dict:
    """TRL's own speed settings for a GPU (`--trl-fast`): padding-free batches (no pad tokens; TRL wants
    FlashAttention for them) and Liger's fused kernels when liger-kernel is installed."""
    import importlib.util

    return {"padding_free": True, "use_liger_kernel": importlib.util.find_spec("liger_kernel") is not None}


def trl_side(model, tok, texts, mode: str, checkpointing: bool, dtype: str, lr: float, micro: int | None,
             fast: dict | None = None):
    """A DPOTrainer on k pairwise rows, `micro` rows per forward (gradient accumulation over the rest, one optimizer
    step in all); returns (step function, batches, tokens it feeds per step)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    prefix, question, candidates = texts
    rows = [{"prompt": [{"role": "user", "content": prefix + question}],
             "chosen": [{"role": "assistant", "content": candidates[0]}],
             "rejected": [{"role": "assistant", "content": r}]} for r in candidates[1:]]
    micro = min(micro or len(rows), len(rows))
    if len(rows) % micro:
        raise SystemExit(f"--trl-micro-batch {micro} must divide k = {len(rows)}")
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="prefrec-vs-trl-"), per_device_train_batch_size=micro,
                     gradient_accumulation_steps=len(rows) // micro, learning_rate=lr, beta=0.1, loss_type=["sigmoid"],
                     gradient_checkpointing=checkpointing, precompute_ref_log_probs=mode == "cached",
                     use_cpu=not torch.cuda.is_available(), bf16=dtype == "bf16", report_to=[],
                     save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0, max_length=None,
                     **(fast or {}))
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=lora)
    if checkpointing:  # Trainer.train() would switch it on at its start; we drive the steps ourselves
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
    trainer.create_optimizer()
    batches = list(trainer.get_train_dataloader())  # the k rows, `micro` per batch
    trainer.current_gradient_accumulation_steps = len(batches)  # set by Trainer.train(), read by training_step

    def step():
        trainer.model.train()
        for batch in batches:
            trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    fed = {"tokens": sum(int(b["attention_mask"].sum()) for b in batches),
           "padded": sum(int(b["input_ids"].numel()) for b in batches),
           "rows": [int(n) for b in batches for n in b["attention_mask"].sum(dim=1).tolist()],
           "responses": sum(int(b["completion_mask"].sum()) for b in batches), "micro_batch": micro}
    return step, batches, fed


def prefrec_side(model, tok, texts, mode: str, lr: float):
    from prefrec.model import add_lora
    from prefrec.scoring.encoding import encode_texts
    from prefrec.scoring.packing import response_logps
    from prefrec.training.losses import PreferenceBatch, dmpo_loss, dpo_loss

    prefix, question, candidates = texts
    tree = encode_texts(tok, prefix, [question], [candidates])
    model = add_lora(model, **LORA)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = dpo_loss if len(candidates) == 2 else dmpo_loss

    def reference():
        with torch.no_grad(), model.disable_adapter():
            return response_logps(model, [tree]).chosen_rejected()

    cached = reference() if mode == "cached" else None

    def step():
        rc, rr = cached if cached is not None else reference()
        pc, pr = response_logps(model, [tree]).chosen_rejected()
        batch = PreferenceBatch(pc, pr, torch.ones_like(pc), torch.ones_like(pr), rc, rr)
        loss = loss_fn(batch, 0.1)[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    prompt = len(tree.prefix) + len(tree.branches[0].question)
    responses = [len(r) for r in tree.branches[0].responses]
    fed = {"tokens": tree.n_tokens(), "padded": tree.n_tokens(), "rows": [tree.n_tokens()],
           "responses": sum(responses), "prompt": prompt, "response_lengths": responses}
    return step, cached, fed, model, tree


def timed(steps: dict, repeats: int) -> dict:
    """One warm-up per side, then `repeats` rounds alternating the sides; seconds per step for each."""
    for fn in steps.values():
        fn()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return times


def one_config(k: int, mode: str, args) -> dict:
    from prefrec.model import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = dict(dtype=args.dtype, device=device, attn_implementation=args.attn)
    torch.manual_seed(0)
    base_p, tok = load_model("embedded", **load)
    texts = sample_texts(tok, k, args.prompt_tokens)
    p_step, p_ref, p_fed, p_model, p_tree = prefrec_side(base_p, tok, texts, mode, args.lr)
    sides = {"prefrec": p_step}
    fed = {"prefrec": p_fed}
    check = {}
    peers = [("trl", False, None)] + ([("trl-checkpointing", True, None)] if args.trl_checkpointing else []) \
        + ([("trl-fast", False, trl_fast_settings())] if args.trl_fast else [])
    for name, ckpt, fast in peers:
        base_t, _ = load_model("embedded", **load)
        try:
            t_step, batches, t_fed = trl_side(base_t, tok, texts, mode, ckpt, args.dtype, args.lr,
                                              args.trl_micro_batch, fast)
        except Exception as e:  # a peer setting this TRL or machine refuses: said, and the other peers still run
            if name == "trl":
                raise
            print(f"vs_trl: {name} skipped: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        sides[name], fed[name] = t_step, t_fed
        if p_ref is not None and "ref_chosen_logps" in batches[0]:  # same reference numbers from both tokenisations?
            # the dataloader shuffles TRL's rows: compare the rejected log-probs as sorted sets
            trl_c = torch.cat([b["ref_chosen_logps"] for b in batches]).float()
            trl_r = torch.cat([b["ref_rejected_logps"] for b in batches]).float().sort().values
            check = {"max_abs_ref_logp_diff": max((trl_c - p_ref[0].float()).abs().max().item(),
                                                  (trl_r - p_ref[1].float().flatten().sort().values).abs().max().item())}
    times = timed(sides, args.repeats)
    row = {"k": k, "mode": mode, "times_s": times, "fed": fed, **check}
    row["median_s"] = {n: statistics.median(t) for n, t in times.items()}
    row["speedup_vs_trl"] = row["median_s"]["trl"] / row["median_s"]["prefrec"]
    passes = 3 if mode == "ref" else 2  # a LoRA step = 2 forwards (flops.py), + the in-step reference pass
    tf = fed["trl"]
    trl_pairs = sum(t * (t + 1) // 2 for t in tf["rows"])  # plain causal rows
    row["useful_gflop"] = {"prefrec": tree_forward_flops(p_model, p_tree) * passes / 1e9,
                           "trl": forward_flops(p_model, tf["tokens"], trl_pairs, tf["responses"]) * passes / 1e9}
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 15])
    ap.add_argument("--modes", nargs="+", choices=["cached", "ref"], default=["cached", "ref"])
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per side and configuration (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--trl-checkpointing", action="store_true", help="also time TRL with its default checkpointing")
    ap.add_argument("--trl-micro-batch", type=int, default=None,
                    help="TRL rows per forward, accumulating gradients over the k rows (default: all k at once; "
                         "at k = 15 on a 24 GB machine all at once is killed for memory)")
    ap.add_argument("--trl-fast", action="store_true",
                    help="also time TRL with its GPU speed settings: padding_free, Liger kernels where installed")
    add_output_args(ap, "vs_trl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    quiet = Quiet()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ceiling = [matmul_gflops(device, args.dtype)]
    rows = []
    for k in args.ks:
        for mode in args.modes:
            rows.append(one_config(k, mode, args))
            r = rows[-1]
            print(f"k={k:>2} {mode:6s} " + "  ".join(f"{n} {s:.2f} s" for n, s in r["median_s"].items())
                  + f"  -> {r['speedup_vs_trl']:.2f}x", file=sys.stderr)
    ceiling.append(matmul_gflops(device, args.dtype))
    write(rows, ceiling, args, quiet.finish(), device)


def write(rows: list[dict], ceiling: list[float], args, machine: dict, device: str) -> None:
    import transformers
    import trl

    from prefrec.io import write_json, write_text
    from prefrec.provenance import provenance

    peak = max(ceiling)
    for r in rows:
        r["fraction_of_ceiling"] = {n: r["useful_gflop"][n] / r["median_s"][n] / peak for n in r["useful_gflop"]}
    stem = result_stem(args.name, machine["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/vs_trl.py " + " ".join(sys.argv[1:])
    result = {"kind": "benchmark", "name": "vs_trl", "command": command.strip(), "device": device,
              "threads": torch.get_num_threads(), "dtype": args.dtype, "machine": machine,
              "matmul_gflops": ceiling, "stack": {"trl": trl.__version__, "transformers": transformers.__version__,
                                                     "torch": torch.__version__},
              "rows": rows, **provenance()}
    write_json(stem.with_suffix(".json"), result)
    write_text(stem.with_suffix(".md"), markdown(result))
    print(stem.with_suffix(".md"))


def markdown(res: dict) -> str:
    v = res["stack"]
    lines = [f"# prefrec vs TRL {v['trl']}: one preference training step, same example", "",
             describe(res["machine"]), "",
             f"`{res['command']}` · {res['device']}, {res['threads']} torch threads, {res['dtype']} · matmul ceiling "
             f"{' / '.join(f'{c:.1f}' for c in res['matmul_gflops'])} GFLOP/s (before / after) · torch {v['torch']}, "
             f"transformers {v['transformers']} · git `{res.get('git_commit')}` · {res.get('created', '')[:19]}", "",
             "| k | reference | TRL s/step | prefrec s/step | speed-up | goal | tokens TRL / prefrec | "
             "of ceiling TRL / prefrec |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        goal = TARGETS.get(r["k"])
        met = "" if goal is None else (f"≥ {goal:g}x: " + ("met" if r["speedup_vs_trl"] >= goal else "**missed**"))
        ms, fed, frac = r["median_s"], r["fed"], r["fraction_of_ceiling"]
        lines.append(f"| {r['k']} | {r['mode']} | {ms['trl']:.2f} | {ms['prefrec']:.2f} | {r['speedup_vs_trl']:.2f}x | "
                     f"{met} | {fed['trl']['padded']} / {fed['prefrec']['tokens']} | "
                     f"{frac['trl']:.0%} / {frac['prefrec']:.0%} |")
        if "trl-fast" in ms:
            lines.append(f"| {r['k']} | {r['mode']}, TRL padding-free (+ Liger where installed) | "
                         f"{ms['trl-fast']:.2f} | {ms['prefrec']:.2f} | {ms['trl-fast'] / ms['prefrec']:.2f}x | | | |")
        if "trl-checkpointing" in ms:
            lines.append(f"| {r['k']} | {r['mode']}, TRL with its default activation checkpointing | "
                         f"{ms['trl-checkpointing']:.2f} | {ms['prefrec']:.2f} | "
                         f"{ms['trl-checkpointing'] / ms['prefrec']:.2f}x | | | |")
    for r in res["rows"]:
        micro = r["fed"]["trl"].get("micro_batch")
        if micro and micro < r["k"]:
            lines += ["", f"k = {r['k']}: TRL ran {micro} rows per forward pass and accumulated gradients over "
                      f"{r['k'] // micro} of them before its optimizer step (`--trl-micro-batch {micro}`)."]
    checks = [r for r in res["rows"] if "max_abs_ref_logp_diff" in r]
    lines += ["", "Medians of the timed steps (raw times in the JSON); reference `cached` = precomputed once (prefrec's "
              "default, TRL's `precompute_ref_log_probs=True`), `ref` = a reference pass inside each step (TRL's "
              "default). Tokens = what each side feeds per step (TRL: its padded batch of k rows of prompt + chosen "
              "and k of prompt + rejected; prefrec: one packed row). Fraction of ceiling = useful FLOPs "
              "(benchmarks/flops.py) per second over the measured matmul rate."]
    if checks:
        lines.append("Same numbers from both: the largest difference between TRL's precomputed reference log-probs "
                     "and prefrec's is " + ", ".join(f"{r['max_abs_ref_logp_diff']:.1e} (k={r['k']})" for r in checks)
                     + " nats.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
