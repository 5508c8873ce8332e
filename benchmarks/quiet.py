"""One rule for every benchmark: was the machine quiet while it ran? A busy run is written as a draft, never final.

A benchmark starts a `Quiet()` before it measures and calls `.finish()` after. The record holds the load average
before and after, and the share of the machine's CPU time that went to *other* processes during the run: all busy
CPU time of the machine (/proc/stat) minus this process's own and its waited-for children's (os.times()), divided by
wall time x cores. The load average alone cannot tell: a benchmark that uses both cores pushes it to ~2 by itself.

    quiet = Quiet()
    ...measure...
    record = quiet.finish()            # {"load_before", "load_after", "others_cpu_share", "busy", "why"}
    stem = result_stem("packing", record["busy"])    # benchmarks/results/packing or packing-draft

Busy = the 1-minute load average before the run above `max_load_per_core` x cores (something else was running when
it started), or other processes took more than `max_others_share` of the CPU during it. Linux only for the CPU share
(elsewhere it is None and only the load before counts).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _machine_busy_cpu_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat; None where unavailable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user; steal is time the hypervisor took, not ours: count it as busy
    busy = sum(ticks[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The CPU's name (/proc/cpuinfo, else platform.processor()): the sessions' machines differ (an AMX Xeon
    multiplies bf16 at ~10x its fp32 rate, an AVX-512 Xeon without BF16 at a fifth), so every result names its CPU."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def settle(max_load_per_core: float = 0.5, timeout: float = 300.0) -> None:
    """Wait (up to `timeout` s) until the 1-minute load average is below the limit Quiet() checks at the start: a job
    that just ended still weighs on it for a minute or two."""
    limit = max_load_per_core * (os.cpu_count() or 1)
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < timeout:
        time.sleep(5)


class Quiet:
    def __init__(self, max_load_per_core: float = 0.5, max_others_share: float = 0.10):
        self.cores = os.cpu_count() or 1
        self.max_load, self.max_share = max_load_per_core, max_others_share
        self.load_before = os.getloadavg()
        self.t0, self.machine0, self.own0 = time.monotonic(), _machine_busy_cpu_s(), _own_cpu_s()

    def finish(self) -> dict:
        wall = time.monotonic() - self.t0
        machine1, own1 = _machine_busy_cpu_s(), _own_cpu_s()
        share = None
        if self.machine0 is not None and machine1 is not None and wall > 0:
            others = (machine1 - self.machine0) - (own1 - self.own0)
            share = max(0.0, others) / (wall * self.cores)
        why = []
        if self.load_before[0] > self.max_load * self.cores:
            why.append(f"load average {self.load_before[0]:.2f} at the start (limit {self.max_load * self.cores:.2f} "
                       f"on {self.cores} cores)")
        if share is not None and share > self.max_share:
            why.append(f"other processes used {share:.0%} of the CPU during the run (limit {self.max_share:.0%})")
        return {"load_before": [round(x, 2) for x in self.load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "others_cpu_share": None if share is None else round(share, 3), "wall_s": round(wall, 1),
                "cores": self.cores, "cpu": cpu_model(), "busy": bool(why), "why": "; ".join(why)}


def describe(record: dict) -> str:
    """One Markdown sentence on the machine's state, for the top of a result file."""
    share = record.get("others_cpu_share")
    text = (f"load average {record['load_before'][0]:.2f} before, {record['load_after'][0]:.2f} after; other "
            f"processes used {'?' if share is None else f'{share:.1%}'} of the CPU during the run")
    if record.get("cpu"):  # results written before the CPU was recorded have none
        text += f"; CPU: {record['cpu']}, {record['cores']} cores"
    if record["busy"]:
        return f"**DRAFT: the machine was busy ({record['why']}); the timings are not a final result.** ({text})"
    return f"Quiet machine: {text}."


def result_stem(name: str, busy: bool, results: Path = RESULTS) -> Path:
    """Where a benchmark writes NAME.json/.md: the final name only for a quiet run, NAME-draft otherwise."""
    return results / (f"{name}-draft" if busy else name)


def add_output_args(ap, name: str) -> None:
    """`--name` and `--out-dir` of a benchmark (one spelling for all): a smoke run can write beside the committed
    result instead of over it."""
    ap.add_argument("--name", default=name, help=f"result file stem (default {name}; a busy run adds -draft)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="result folder (default benchmarks/results)")


def start_server(cmd: list[str], env: dict, port: int, timeout: float, poll: float):
    """Start a server process and wait until its /health answers 200 (RuntimeError with its stderr if it exits, or
    when `timeout` seconds pass): the serving benchmarks' one launcher."""
    import subprocess

    import httpx

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(poll)
    proc.kill()
    raise RuntimeError(f"server did not start within {timeout:g} s")
