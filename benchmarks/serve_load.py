"""Load test of `prefrec serve`: N concurrent clients for M seconds, normal and worst-case in-limit requests.

    python benchmarks/serve_load.py                       # 2 normal + 1 worst-case client, 60 s (embedded model)
    python benchmarks/serve_load.py --seconds 20 --out-dir /tmp/x   # a quick look
    python benchmarks/serve_load.py --limits              # slow uploads, slow heads, disconnects, a full queue
                                                          # on a tiny random-init model (~1 min; serve_limits.py)

Starts `prefrec serve MODEL` as a subprocess on 127.0.0.1 (loopback only) and measures, from this process:
  idle      normal requests one at a time, nothing else running (their median is the "idle latency"), then one
            worst-case request alone;
  load      --normal-clients clients sending normal requests and --worst-clients clients sending worst-case
            requests back to back, for --seconds; every request has a client timeout of max_seconds + 30 s.
normal     = 10 history titles and 20 candidates of real film titles (the candidates protocol's shape);
worst case = the most expensive request the server accepts: 50 history titles and as many 300-character candidates
             of random letters (about 2.5 characters per token) as fit the token budget with one history title,
             found by tokenising locally, so it fills the budget (--max-tokens) almost exactly.
Reports throughput, p50/p95/p99 latency per kind, errors by status, the server's peak RSS (Linux VmHWM of the
server process, model included) and the machine's load average before and after (the machine may be shared).
Bounded: at most --seconds of load (≤ 180), at most --max-requests requests; the server is stopped at the end.

Writes OUT.json (every figure, the configuration and provenance) and OUT.md (the table and the targets of issue 15:
peak RSS < 4 GB, p99 of normal requests under load < 3× their idle latency).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packing import film_titles, machine  # noqa: E402 - the benchmarks' shared film list and machine description
import quiet  # noqa: E402
from quiet import add_output_args, describe, result_stem  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def normal_request(i: int) -> dict:
    films = film_titles()
    rng = random.Random(i)
    picked = rng.sample(films, 30)
    return {"history": picked[:10], "candidates": picked[10:], "top": 5}


def worst_request(tokenizer, max_tokens: int, model_context: int | None, seed: int = 0) -> dict:
    """50 history titles and the most 300-character random candidates that still fit the budget."""
    from prefrec.scoring.budget import Budget, TokenBudgetError
    from prefrec.serving.rank import budgeted_tree

    rng = random.Random(seed)
    text = lambda: "".join(rng.choice(string.ascii_letters + string.digits + " ") for _ in range(300)).strip()  # noqa: E731
    history, pool = [text() for _ in range(50)], [text() for _ in range(100)]
    budget = Budget(min(n for n in (max_tokens, model_context) if n), "load test")
    lo, hi = 1, 100  # largest candidate count that is accepted
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            budgeted_tree(tokenizer, history, pool[:mid], budget=budget)
            lo = mid
        except TokenBudgetError:
            hi = mid - 1
    tree, kept, _ = budgeted_tree(tokenizer, history, pool[:lo], budget=budget)
    return {"history": history, "candidates": pool[:lo], "_tokens": tree.n_tokens(), "_history_kept": len(kept)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int, field: str) -> int:
    m = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


def start_server(args, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "prefrec", "serve", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--max-tokens", str(args.max_tokens), "--max-seconds", str(args.max_seconds), "--max-queue", "16",
           "--dtype", args.dtype]
    return quiet.start_server(cmd, env, port, timeout=300, poll=0.5)


def send(client: httpx.Client, body: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    try:
        status = client.post("/rank", json={k: v for k, v in body.items() if not k.startswith("_")}).status_code
    except httpx.TimeoutException:
        status = 0  # client timeout
    return time.perf_counter() - t0, status


def load_phase(base: str, args, worst: dict) -> list[dict]:
    records: list[dict] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client(kind: str, n: int) -> None:
        with httpx.Client(base_url=base, timeout=args.max_seconds + 30) as c:
            i = 0
            while time.monotonic() < stop_at:
                with lock:
                    if len(records) >= args.max_requests:
                        return
                body = worst if kind == "worst" else normal_request(1000 * n + i)
                latency, status = send(c, body)
                with lock:
                    records.append({"kind": kind, "latency_s": latency, "status": status, "end": time.monotonic()})
                i += 1

    threads = [threading.Thread(target=client, args=("normal", n)) for n in range(args.normal_clients)]
    threads += [threading.Thread(target=client, args=("worst", 100 + n)) for n in range(args.worst_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]  # noqa: E731 - nearest rank
    return {"n": len(xs), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": xs[-1]}


def run(args) -> dict:
    from quiet import Quiet
    from transformers import AutoTokenizer

    from prefrec.model import embedded_model_dir
    from prefrec.provenance import provenance

    quiet = Quiet()  # the server is our child: its CPU time is ours, not "other processes'"
    host = machine()
    host.pop("load_average_at_start", None)  # the quiet record below has the load before and after
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        tok = AutoTokenizer.from_pretrained(embedded_model_dir() if args.model == "embedded" else args.model)
        health = httpx.get(f"{base}/health").json()
        worst = worst_request(tok, args.max_tokens, health["max_tokens_effective"])
        rss_loaded = rss_kb(server.pid, "VmRSS")
        with httpx.Client(base_url=base, timeout=args.max_seconds + 30) as c:
            send(c, normal_request(0))  # warm-up
            idle = [send(c, normal_request(i)) for i in range(1, args.idle_requests + 1)]
            idle_worst = send(c, worst)
        t0 = time.monotonic()
        records = load_phase(base, args, worst)
        wall = time.monotonic() - t0
        final_health = httpx.get(f"{base}/health").json()
        peak_kb = rss_kb(server.pid, "VmHWM")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    ok = [r for r in records if r["status"] == 200]
    by_status: dict[str, dict[str, int]] = {}
    for r in records:
        by_status.setdefault(r["kind"], {}).setdefault(str(r["status"]), 0)
        by_status[r["kind"]][str(r["status"])] += 1
    idle_normal = statistics.median(x for x, _ in idle)
    normal = percentiles([r["latency_s"] for r in ok if r["kind"] == "normal"])
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "requests": {"normal": {k: v for k, v in normal_request(0).items()},
                     "worst": {"history_titles": len(worst["history"]), "history_kept": worst["_history_kept"],
                               "candidates": len(worst["candidates"]), "title_chars": 300,
                               "tokens": worst["_tokens"]}},
        "budget_tokens": health["max_tokens_effective"],
        "idle": {"normal_latency_s": [x for x, _ in idle], "normal_median_s": idle_normal,
                 "worst_latency_s": idle_worst[0], "worst_status": idle_worst[1]},
        "load": {"wall_s": wall, "requests": len(records), "ok": len(ok), "throughput_rps": len(ok) / wall,
                 "throughput_rps_by_kind": {k: sum(1 for r in ok if r["kind"] == k) / wall
                                            for k in ("normal", "worst")},
                 "latency_s": {"normal": normal,
                               "worst": percentiles([r["latency_s"] for r in ok if r["kind"] == "worst"])},
                 "status_by_kind": by_status, "server_jobs": final_health["jobs"]},
        "memory": {"server_rss_after_load_gb": rss_loaded / 2**20, "server_peak_rss_gb": peak_kb / 2**20},
        "targets": {"peak_rss_under_4gb": peak_kb / 2**20 < 4.0,
                    "normal_p99_over_idle": (normal.get("p99", float("nan")) / idle_normal),
                    "normal_p99_under_3x_idle": normal.get("p99", float("inf")) < 3 * idle_normal},
        "machine": {**host, "quiet": quiet.finish()},
        **provenance(),
    }


def markdown(res: dict) -> str:
    c, load, idle, t = res["config"], res["load"], res["idle"], res["targets"]
    w = res["requests"]["worst"]
    rows = [f"| {k} | {v.get('n', 0)} | " + " | ".join(f"{v[q]:.2f}" if q in v else "–" for q in
                                                       ("p50", "p95", "p99", "max")) + f" | {res['load']['throughput_rps_by_kind'][k]:.3f} |"
            for k, v in load["latency_s"].items()]
    return "\n".join([
        "# `prefrec serve` under load",
        "",
        f"{c['normal_clients']} clients sending normal requests and {c['worst_clients']} sending worst-case in-limit "
        f"requests back to back for {c['seconds']} s, model `{c['model']}` ({c.get('dtype', 'fp32')}, CPU, {c['threads']} torch thread), "
        f"loopback. Normal: 10 history titles, 20 candidates (real film titles), top 5. Worst case: "
        f"{w['history_titles']} history titles and {w['candidates']} candidates of {w['title_chars']} random "
        f"characters = {w['tokens']} tokens with {w['history_kept']} history title(s) kept, against a budget of "
        f"{res['budget_tokens']} tokens (`--max-tokens {c['max_tokens']}`, `--max-seconds {c['max_seconds']}`).",
        "",
        describe(res["machine"]["quiet"]),
        "",
        f"Idle latency (one request at a time): normal median {idle['normal_median_s']:.2f} s over "
        f"{len(idle['normal_latency_s'])} requests; one worst-case request alone {idle['worst_latency_s']:.2f} s "
        f"(status {idle['worst_status']}).",
        "",
        "| under load | ok requests | p50 (s) | p95 (s) | p99 (s) | max (s) | throughput (req/s) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"All: {load['ok']} of {load['requests']} requests answered 200 in {load['wall_s']:.1f} s "
        f"({load['throughput_rps']:.3f} req/s). Status counts: {json.dumps(load['status_by_kind'])} (0 = client "
        f"timeout). Server jobs: {json.dumps(load['server_jobs'])}.",
        "",
        f"Server peak RSS (VmHWM, model included): **{res['memory']['server_peak_rss_gb']:.2f} GB** "
        f"(RSS after loading {res['memory']['server_rss_after_load_gb']:.2f} GB).",
        "",
        "Targets (issue 15):",
        f"- peak RSS < 4 GB: {'met' if t['peak_rss_under_4gb'] else 'MISSED'} "
        f"({res['memory']['server_peak_rss_gb']:.2f} GB)",
        f"- p99 of normal requests under load < 3× their idle latency: "
        f"{'met' if t['normal_p99_under_3x_idle'] else 'MISSED'} ({t['normal_p99_over_idle']:.2f}×)",
        "",
        f"Command: `python benchmarks/serve_load.py --seconds {c['seconds']} --normal-clients {c['normal_clients']} "
        f"--worst-clients {c['worst_clients']} --max-requests {c['max_requests']} --idle-requests "
        f"{c['idle_requests']} --dtype {c.get('dtype', 'fp32')}` (git {res['git_commit']}, {res['created']}).",
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--seconds", type=float, default=60.0, help="Length of the load phase (at most 180).")
    p.add_argument("--normal-clients", type=int, default=2)
    p.add_argument("--worst-clients", type=int, default=1)
    p.add_argument("--idle-requests", type=int, default=5)
    p.add_argument("--max-requests", type=int, default=2000, help="Stop after this many requests under load.")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1, help="OMP/torch threads of the server.")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="The server's --dtype (bf16: CPUs with "
                   "AVX-512 BF16 / AMX compute it at several times the fp32 rate).")
    p.add_argument("--limits", action="store_true", help="Instead: misbehaving clients against the limits on a "
                   "tiny random-init model (serve_limits.py); writes serve_load-limits.*; --seconds is then the "
                   "full-queue phase (default 10).")
    p.add_argument("--max-queue", type=int, default=8, help="--limits: the server's --max-queue.")
    p.add_argument("--read-timeout", type=float, default=2.0, help="--limits: the server's --read-timeout.")
    p.add_argument("--idle-timeout", type=float, default=2.0, help="--limits: the server's --idle-timeout.")
    add_output_args(p, "serve_load")
    args = p.parse_args()
    if args.limits:
        import serve_limits as mode

        args.name = "serve_load-limits" if args.name == "serve_load" else args.name
        args.seconds = 10.0 if "--seconds" not in sys.argv else args.seconds
        args.max_seconds = 10.0 if "--max-seconds" not in sys.argv else args.max_seconds
    else:
        mode = sys.modules[__name__]
    if not 0 < args.seconds <= 180:
        p.error("--seconds must be in (0, 180]")

    from prefrec.io import write_json, write_text

    res = mode.run(args)
    stem = result_stem(args.name, res["machine"]["quiet"]["busy"], args.out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), res)
    write_text(stem.with_suffix(".md"), mode.markdown(res))
    print(mode.markdown(res))


if __name__ == "__main__":
    main()
