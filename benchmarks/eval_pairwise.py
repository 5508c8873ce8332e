"""Benchmark: pairwise evaluation on the embedded model, packed vs one sequence per ordering.

Scores N pairwise test samples (each: one prompt, two orderings "pos, neg" / "neg, pos") three ways and reports wall
time, samples/s, tokens fed and the largest score difference between the paths:

    (the three run interleaved in chunks of 10 samples, so a changing load on a shared machine affects all three alike)

    packed-batched   prefrec.scoring.packing.score_trees: one row per sample (prompt once, both orderings after it),
                     rows batched up to 4096 padded tokens
    packed-single    prefrec.scoring.packing.response_logps on one sample at a time (what `prefrec eval` does on CPU)
    naive            prefrec.scoring.packing.naive_response_logps: one full sequence per ordering (the prompt twice), the two
                     sequences of a sample in one padded batch, full-vocabulary logits — what TRL-style code does

Data: `--samples DIR` (a `prefrec data prepare` pairwise folder, its test.jsonl), else it prepares one into a
temporary folder from the offline copies (../shared/data): ML-1M (the staged users 1–2999), k = 1, 1,000 test users.
ML-100K has only 902 users with ≥ 5 positives and ≥ 5 negatives, so it cannot give 1,000 user-disjoint test samples;
`--dataset ml-100k` uses all 902.

    .venv/bin/python benchmarks/eval_pairwise.py                 # the full run (1,000 samples; ~1 h on 2 quiet cores)
    .venv/bin/python benchmarks/eval_pairwise.py --limit 50      # a quick run

Writes benchmarks/results/eval_pairwise.json and .md (or --name NAME, --out-dir DIR).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prefrec.tasks.metrics import pairwise_metrics
from prefrec.io import write_text
from prefrec.model import load_model
from prefrec.paths import shared_data_dir
from prefrec.provenance import provenance
from prefrec.io import write_json
from prefrec.samples import read_jsonl
from prefrec.scoring.encoding import encode_sample
from prefrec.scoring.packing import naive_response_logps, response_logps, score_trees

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quiet import Quiet, add_output_args, describe, result_stem  # noqa: E402

PATHS = ("packed-batched", "packed-single", "naive")


def prepared_samples(args) -> tuple[list, str]:
    if args.samples:
        return read_jsonl(Path(args.samples) / "test.jsonl"), str(args.samples)
    from prefrec.data.prepare import prepare

    shared = shared_data_dir()
    if shared is None:
        sys.exit("no --samples and no ../shared/data: prepare a pairwise folder with `prefrec data prepare`")
    out = Path(tempfile.mkdtemp(prefix="prefrec-bench-"))
    n_test = None if args.dataset == "ml-100k" else args.limit
    prepare(args.dataset, shared / args.dataset, "pairwise", out, seed=0, negatives=1, n_train=0, n_valid=0,
            n_test=n_test)
    return read_jsonl(out / "test.jsonl"), f"prefrec data prepare --dataset {args.dataset} --task pairwise " \
                                           f"--negatives 1 --train 0 --valid 0 --test {n_test or 'all'} --seed 0"


def first_pair(s1_s2_nested) -> tuple[np.ndarray, np.ndarray]:
    s1 = np.array([float(b[0]) for tree in s1_s2_nested for b in tree])
    s2 = np.array([float(b[1]) for tree in s1_s2_nested for b in tree])
    return s1, s2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", help="prepared pairwise folder (uses its test.jsonl)")
    ap.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"], help="when preparing data here")
    ap.add_argument("--limit", type=int, default=1000, help="number of test samples (default 1000)")
    ap.add_argument("--chunk", type=int, default=10, help="samples per interleaved timing chunk")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                    help="which paths to time (naive is always scored: it is the reference)")
    add_output_args(ap, "eval_pairwise")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    samples, source = prepared_samples(args)
    samples = samples[: args.limit]
    quiet = Quiet()
    t = time.perf_counter()
    model, tok = load_model("embedded", dtype="fp32", device="cpu")
    load_s = time.perf_counter() - t
    trees = [encode_sample(tok, s, which="all") for s in samples]
    n_cmp = sum(len(tr.branches) for tr in trees)

    # The three paths run interleaved, chunk by chunk, so a change in machine load (a shared CPU) hits all alike.
    seconds = {k: 0.0 for k in PATHS if k in args.paths or k == "naive"}
    nested = {k: [] for k in seconds}
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for lo in tqdm(range(0, len(trees), args.chunk), desc="chunks", unit="chunk"):
            chunk = trees[lo:lo + args.chunk]
            if "packed-batched" in seconds:
                t = time.perf_counter()
                nested["packed-batched"] += score_trees(model, chunk, max_tokens_per_batch=4096,
                                                        progress=False).nested()
                seconds["packed-batched"] += time.perf_counter() - t
            if "packed-single" in seconds:
                t = time.perf_counter()
                for tr in chunk:
                    nested["packed-single"].append(response_logps(model, [tr]).nested()[0])
                seconds["packed-single"] += time.perf_counter() - t
            t = time.perf_counter()
            for tr in chunk:
                nested["naive"].append(naive_response_logps(model, [tr]).nested()[0])
            seconds["naive"] += time.perf_counter() - t
    packed_tokens = sum(tr.n_tokens() for tr in trees)
    runs = {k: (seconds[k], nested[k], sum(tr.n_naive_tokens() for tr in trees) if k == "naive" else packed_tokens)
            for k in seconds}
    machine = quiet.finish()

    ref1, ref2 = first_pair(nested["naive"])
    rows = {}
    for name, (secs, scores, tokens) in runs.items():
        s1, s2 = first_pair(scores)
        m = pairwise_metrics(s1, s2)
        rows[name] = {"seconds": secs, "samples_per_s": len(samples) / secs, "tokens": tokens,
                      "tokens_per_s": tokens / secs, "auc": m["auc"], "pairwise_accuracy": m["pairwise_accuracy"],
                      "max_abs_diff_vs_naive": float(max(np.abs(s1 - ref1).max(), np.abs(s2 - ref2).max()))}
    speedup = {k: rows["naive"]["seconds"] / v["seconds"] for k, v in rows.items()}
    prompt_tokens = [len(tr.prefix) + len(tr.branches[0].question) for tr in trees]
    resp_tokens = [len(r) for tr in trees for b in tr.branches for r in b.responses]
    result = {
        "kind": "benchmark", "name": "eval_pairwise", "model": "embedded (SmolLM2-135M-Instruct, fp32)",
        "n_samples": len(samples), "n_comparisons": n_cmp, "samples": source,
        "prompt_tokens_mean": float(np.mean(prompt_tokens)), "response_tokens_mean": float(np.mean(resp_tokens)),
        "load_s": load_s, "runs": rows, "speedup_vs_naive": speedup,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "quiet": machine},
        "config": vars(args), **provenance(),
    }
    stem = result_stem(args.name, machine["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), result)

    md = ["# Pairwise evaluation: packed vs one sequence per ordering", "",
          f"{len(samples)} pairwise test samples ({n_cmp} comparisons) from `{source}`; embedded model "
          f"(SmolLM2-135M-Instruct, fp32, CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores). "
          f"Prompt {np.mean(prompt_tokens):.0f} tokens on average, responses {np.mean(resp_tokens):.1f}.", "",
          describe(machine), "",
          "| path | wall time (s) | samples/s | tokens fed | speed-up vs naive | max abs logp diff vs naive | AUC |",
          "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['seconds']:.1f} | {r['samples_per_s']:.2f} | {r['tokens']:,} | "
                  f"{speedup[name]:.2f}× | {r['max_abs_diff_vs_naive']:.1e} | {r['auc']:.4f} |")
    md += ["", "packed-batched = score_trees, rows of one sample each, batched up to 4,096 padded tokens; "
           "packed-single = one packed row per forward (what `prefrec eval` does on CPU); naive = the two orderings "
           "as two full sequences in one padded batch, full-vocabulary logits.",
           "", f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/eval_pairwise.py'] + sys.argv[1:])}` "
           f"(git {result['git_commit']}, torch {result['versions']['torch']}, "
           f"transformers {result['versions']['transformers']}, {result['created'][:19]} UTC)."]
    write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
