"""`prefrec serve` holding its limits against misbehaving clients: `python benchmarks/serve_load.py --limits`.

A tiny random-init model (2 layers, hidden 64, the embedded model's tokenizer) is saved to a temporary folder and
served by `prefrec serve` as a subprocess on 127.0.0.1, so the phases measure the server's bookkeeping, not the
model. Every client is on loopback; every phase is bounded in count and time; the server is stopped at the end.

  slow uploads   max_queue clients each announce a 1,000-byte body and send 13 bytes: each must get 408 and a
                 closed connection about --read-timeout later; while they hold their places, normal requests must
                 get 503 + Retry-After (slow clients count against max_queue), and a 200 once they are gone.
  slow heads     clients that send half a request head, or connect and send nothing: each connection must be
                 closed about --idle-timeout later, while normal requests keep being answered.
  disconnects    clients that send the most expensive in-limit request and give up early: the server must drop
                 their work (jobs "cancelled") and answer the next request.
  at max_queue   2 x max_queue clients sending normal requests back to back for --seconds (after a 503 a client
                 waits its Retry-After, at most 2 s): every answer is 200 or 503 with Retry-After, none hangs, and
                 the admitted count returns to 0.

At the end the server's open file descriptors must be back to their count before the phases (no leaked
connection) and its peak RSS is recorded. Writes serve_load-limits.json/.md with the machine's load (quiet.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import quiet
from serve_load import free_port, normal_request, percentiles, rss_kb, worst_request

SLOW_BODY = (b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000"
             b"\r\n\r\n" + b'{"history": [')  # 13 of the 1,000 announced bytes
SLOW_HEAD = b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"


def save_tiny_model(folder: Path) -> Path:
    """A 2-layer random-init Llama with the embedded model's tokenizer (as tests/conftest.py builds), 4,096-token
    context so the default token budget applies."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prefrec.model import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def start_server(folder: Path, port: int, args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "prefrec", "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
           "--max-queue", str(args.max_queue), "--read-timeout", str(args.read_timeout),
           "--idle-timeout", str(args.idle_timeout), "--max-seconds", str(args.max_seconds),
           "--max-tokens", str(args.max_tokens), "--label", "tiny-random"]
    return quiet.start_server(cmd, env, port, timeout=120, poll=0.3)


def hold(port: int, data: bytes, wait: float = 30.0) -> dict:
    """Send `data` on a raw socket, read until the server closes it (at most `wait` s): the status line and how long
    the server kept the connection."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        if data:
            s.sendall(data)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
            closed = True
        except socket.timeout:
            closed = False
    return {"closed": closed, "held_s": time.monotonic() - t0,
            "status": received.split(b"\r\n", 1)[0].decode("latin-1") if received else ""}


def post(client: httpx.Client, body: dict) -> dict:
    t0 = time.monotonic()
    try:
        r = client.post("/rank", json={k: v for k, v in body.items() if not k.startswith("_")})
        status, retry = r.status_code, r.headers.get("retry-after")
    except httpx.TimeoutException:
        status, retry = 0, None  # a client timeout: the server left it waiting
    return {"status": status, "retry_after": retry, "latency_s": time.monotonic() - t0}


def health(base: str) -> dict:
    return httpx.get(f"{base}/health", timeout=10).json()


def wait_for(predicate, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not predicate():
        time.sleep(0.05)
    return predicate()


def slow_uploads(base: str, port: int, args) -> dict:
    with ThreadPoolExecutor(max_workers=args.max_queue) as pool:
        held = [pool.submit(hold, port, SLOW_BODY) for _ in range(args.max_queue)]
        all_admitted = wait_for(lambda: health(base)["admitted"] == args.max_queue)
        with httpx.Client(base_url=base, timeout=30) as c:
            during = [post(c, normal_request(i)) for i in range(5)]
        slow = [f.result() for f in held]
    with httpx.Client(base_url=base, timeout=30) as c:
        after = post(c, normal_request(99))
    return {"clients": args.max_queue, "all_admitted": all_admitted, "slow": slow, "normal_during": during,
            "normal_after": after,
            "held": (all(s["closed"] and s["status"].startswith("HTTP/1.1 408") and
                         s["held_s"] < args.read_timeout + 2 for s in slow)
                     and all(r["status"] == 503 and r["retry_after"] for r in during)
                     and after["status"] == 200)}


def slow_heads(base: str, port: int, args, n: int = 20) -> dict:
    with ThreadPoolExecutor(max_workers=2 * n) as pool:
        held = [pool.submit(hold, port, SLOW_HEAD if i % 2 else b"") for i in range(2 * n)]
        time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as c:
            during = [post(c, normal_request(200 + i)) for i in range(5)]
        slow = [f.result() for f in held]
    return {"clients": 2 * n, "slow": slow, "normal_during": during,
            "held": (all(s["closed"] and s["held_s"] < args.idle_timeout + 2 for s in slow)
                     and all(r["status"] == 200 for r in during))}


def disconnects(base: str, args, worst: dict, n: int = 6) -> dict:
    with httpx.Client(base_url=base, timeout=60) as c:
        alone = post(c, worst)
    give_up = max(0.05, alone["latency_s"] / 4)
    before = health(base)["jobs"]["cancelled"]

    def leave(_):
        with httpx.Client(base_url=base, timeout=give_up) as c:
            return post(c, worst)

    with ThreadPoolExecutor(max_workers=n) as pool:
        left = list(pool.map(leave, range(n)))
    settled = wait_for(lambda: health(base)["admitted"] == 0)
    cancelled = health(base)["jobs"]["cancelled"] - before
    with httpx.Client(base_url=base, timeout=60) as c:
        after = post(c, normal_request(300))
    return {"clients": n, "worst_alone_s": alone["latency_s"], "worst_alone_status": alone["status"],
            "client_timeout_s": give_up, "gave_up": sum(r["status"] == 0 for r in left),
            "server_cancelled": cancelled, "admitted_back_to_0": settled, "normal_after": after,
            "held": settled and after["status"] == 200 and cancelled >= 1}


def at_max_queue(base: str, args) -> dict:
    records: list[dict] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=args.max_seconds + 10) as c:
            i = 0
            while time.monotonic() < stop_at and i < 2000:
                r = post(c, normal_request(10_000 * (n + 1) + i))
                with lock:
                    records.append(r)
                i += 1
                if r["status"] == 503:  # a polite client waits as told (capped, so the phase stays short)
                    time.sleep(min(float(r["retry_after"] or 1), 2.0))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2 * args.max_queue)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    settled = wait_for(lambda: health(base)["admitted"] == 0)
    return {"clients": 2 * args.max_queue, "seconds": args.seconds, "requests": len(records), "statuses": statuses,
            "latency_s_200": percentiles([r["latency_s"] for r in records if r["status"] == 200]),
            "latency_s_503": percentiles([r["latency_s"] for r in records if r["status"] == 503]),
            "admitted_back_to_0": settled,
            "held": settled and set(statuses) <= {"200", "503"} and statuses.get("200", 0) > 0
            and all(r["retry_after"] for r in records if r["status"] == 503)}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run(args) -> dict:
    from packing import machine
    from quiet import Quiet
    from transformers import AutoTokenizer

    from prefrec.provenance import provenance

    quiet = Quiet()  # the server is our child: its CPU time is ours, not "other processes'"
    host = machine()
    host.pop("load_average_at_start", None)
    with tempfile.TemporaryDirectory(prefix="prefrec-serve-limits-") as tmp:
        folder = save_tiny_model(Path(tmp) / "tiny-random")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(folder, port, args)
        try:
            worst = worst_request(AutoTokenizer.from_pretrained(folder), args.max_tokens,
                                  health(base)["max_tokens_effective"])
            with httpx.Client(base_url=base, timeout=30) as c:
                post(c, normal_request(0))  # warm-up
            fds_before = open_fds(server.pid)
            phases = {"slow_uploads": slow_uploads(base, port, args), "slow_heads": slow_heads(base, port, args),
                      "disconnects": disconnects(base, args, worst), "at_max_queue": at_max_queue(base, args)}
            wait_for(lambda: open_fds(server.pid) <= fds_before, seconds=args.idle_timeout + 5)
            fds_after, final = open_fds(server.pid), health(base)
            peak_kb = rss_kb(server.pid, "VmHWM")
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return {"config": {k: v for k, v in vars(args).items() if k not in ("out_dir",)} | {"out_dir": str(args.out_dir)},
            "phases": phases, "worst_request": {"candidates": len(worst["candidates"]), "tokens": worst["_tokens"]},
            "server": {"open_fds_before": fds_before, "open_fds_after": fds_after, "jobs": final["jobs"],
                       "admitted_at_end": final["admitted"], "peak_rss_gb": peak_kb / 2**20},
            "held": all(p["held"] for p in phases.values()) and fds_after <= fds_before and final["admitted"] == 0,
            "machine": {**host, "quiet": quiet.finish()}, **provenance()}


def _span(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f} s" if xs else "–"


def markdown(res: dict) -> str:
    from quiet import describe

    c, p, srv = res["config"], res["phases"], res["server"]
    up, heads, dis, full = p["slow_uploads"], p["slow_heads"], p["disconnects"], p["at_max_queue"]
    ok = lambda x: "held" if x["held"] else "**BROKEN**"  # noqa: E731
    lat = full["latency_s_200"]
    return "\n".join([
        "# `prefrec serve` holding its limits",
        "",
        f"Tiny random-init model (2 layers, hidden 64), `--max-queue {c['max_queue']} --read-timeout "
        f"{c['read_timeout']} --idle-timeout {c['idle_timeout']} --max-seconds {c['max_seconds']} --max-tokens "
        f"{c['max_tokens']}`, {c['threads']} torch thread, loopback.",
        "",
        describe(res["machine"]["quiet"]),
        "",
        "| phase | clients | what happened | limit |",
        "|---|---|---|---|",
        f"| slow uploads (13 of 1,000 body bytes) | {up['clients']} | answered "
        f"{sorted({s['status'] for s in up['slow']})} and closed after {_span([s['held_s'] for s in up['slow']])}; "
        f"normal requests meanwhile: {[r['status'] for r in up['normal_during']]} (Retry-After "
        f"{sorted({r['retry_after'] for r in up['normal_during']})}), after: {up['normal_after']['status']} | "
        f"{ok(up)} |",
        f"| slow or empty request heads | {heads['clients']} | closed after "
        f"{_span([s['held_s'] for s in heads['slow']])}; normal requests meanwhile: "
        f"{[r['status'] for r in heads['normal_during']]} | {ok(heads)} |",
        f"| disconnects (worst-case request, {res['worst_request']['tokens']} tokens, alone "
        f"{dis['worst_alone_s']:.2f} s) | {dis['clients']} | gave up after {dis['client_timeout_s']:.2f} s: "
        f"{dis['gave_up']}; server cancelled {dis['server_cancelled']} job(s); next request "
        f"{dis['normal_after']['status']} | {ok(dis)} |",
        f"| {full['clients']} clients at max_queue {c['max_queue']} for {full['seconds']:g} s | {full['clients']} | "
        f"{full['requests']} requests: {json.dumps(full['statuses'])}; 200 latency p50 "
        f"{lat.get('p50', float('nan')):.3f} s, p99 {lat.get('p99', float('nan')):.3f} s; admitted back to 0: "
        f"{full['admitted_back_to_0']} | {ok(full)} |",
        "",
        f"Server: open file descriptors {srv['open_fds_before']} before the phases, {srv['open_fds_after']} after; "
        f"admitted at the end {srv['admitted_at_end']}; jobs {json.dumps(srv['jobs'])}; peak RSS "
        f"{srv['peak_rss_gb']:.2f} GB. **All limits {'held' if res['held'] else 'NOT held'}.**",
        "",
        f"Command: `python benchmarks/serve_load.py --limits --seconds {c['seconds']:g}` (git {res['git_commit']}, "
        f"{res['created']}).",
        "",
    ])
