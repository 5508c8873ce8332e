"""Would batching concurrent `prefrec serve` requests into shared forwards raise throughput? (issue #43 point 4)

    python benchmarks/serve_batching.py                  # embedded model, fp32, 1 torch thread (serve_load's setup)
    python benchmarks/serve_batching.py --dtype bf16 --threads 2

The server scores a request as one packed tree (history once, every candidate after it) in forward chunks over a
KV cache (`packing.chunked_response_logps`). This measures, on serve_load's normal request (10 history titles, 20
candidates of real film titles), the seconds per request of:
  alone     each request on its own, as the server runs it (chunked, 256 tokens a chunk);
  rows B    B requests in one forward, one padded row each (`packing.response_logps`, batch dimension B);
  packed B  B requests in one forward, laid side by side in one row with block-diagonal attention (pack_tokens).
Requests per second = 1 / seconds per request. Every shared forward's scores are checked against the requests
scored alone (max |difference| reported; in fp32 the result is refused above 1e-3: a faster wrong answer is no
answer; in bf16 the two orders of computation differ by more, and the difference is only reported).
The median of --repeats timings is kept. The machine's load is recorded (benchmarks/quiet.py); a busy machine writes
a draft, never the result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet  # noqa: E402
from quiet import add_output_args, describe, result_stem  # noqa: E402
from serve_load import normal_request  # noqa: E402 - the same request shape as the load test


def _trees(tokenizer, n: int):
    from prefrec.serving.rank import RankPrompt, build_tree

    return [build_tree(tokenizer, r["history"], r["candidates"], "movies", RankPrompt())
            for r in map(normal_request, range(n))]


def _timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds of `repeats` calls after one warm-up, the last result)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(model, trees, sizes: list[int], repeats: int, tol: float) -> list[dict]:
    from prefrec.scoring.packing import chunked_response_logps, response_logps
    from prefrec.serving.rank import run_steps

    alone_s, alone = _timed(lambda: [run_steps(chunked_response_logps(model, t)) for t in trees], repeats)
    alone = [x for scores in alone for x in scores]
    rows = [{"mode": "alone", "requests": len(trees), "s_per_request": alone_s / len(trees), "max_abs_diff": 0.0}]
    for b in sizes:
        groups = [trees[i:i + b] for i in range(0, len(trees) - b + 1, b)]
        for mode, pack in (("rows", None), ("packed", 1 << 20)):
            def run():
                with torch.inference_mode():
                    return [x for g in groups for x in response_logps(model, g, pack_tokens=pack).summed.tolist()]
            s, got = _timed(run, repeats)
            diff = max(abs(a - b_) for a, b_ in zip(got, alone[:len(got)]))
            if diff > tol:
                raise SystemExit(f"{mode} {b}: scores differ from the requests scored alone by {diff:.2e}")
            n = sum(len(g) for g in groups)
            rows.append({"mode": f"{mode} {b}", "requests": n, "s_per_request": s / n, "max_abs_diff": diff})
    for r in rows:
        r["requests_per_s"] = 1 / r["s_per_request"]
        r["vs_alone"] = rows[0]["s_per_request"] / r["s_per_request"]
    return rows


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"# Batching serve requests into shared forwards ({c['model']}, {c['dtype']}, {c['threads']} torch "
             "thread(s))", "", describe(res["machine_state"]), "",
             f"Request: 10 history titles + 20 candidates (serve_load's normal request), {res['tokens_per_request']} "
             f"tokens as a packed tree; median of {c['repeats']} timings.", "",
             "| mode | requests | s / request | requests / s | × alone | max abs diff vs alone |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['mode']} | {r['requests']} | {r['s_per_request']:.3f} | {r['requests_per_s']:.2f} | "
                     f"{r['vs_alone']:.2f} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="2,4", help="batch sizes (requests per shared forward)")
    ap.add_argument("--repeats", type=int, default=3)
    add_output_args(ap, "serve_batching")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from prefrec.model import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype, device="cpu")
    model.eval()
    sizes = [int(x) for x in args.sizes.split(",")]
    trees = _trees(tokenizer, max(sizes) * 2)
    quiet.settle()  # a job that just ended still weighs on the load average for a minute or two
    q = quiet.Quiet()
    rows = measure(model, trees, sizes, args.repeats, tol=1e-3 if args.dtype == "fp32" else float("inf"))
    state = q.finish()
    res = {"config": vars(args) | {"out_dir": str(args.out_dir)}, "machine_state": state, "rows": rows,
           "tokens_per_request": round(statistics.mean(t.n_tokens() for t in trees))}
    stem = result_stem(args.name, state["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
