"""Jobs on a cluster through submitit: what `prefrec experiment GRID.yaml --launcher local|slurm` runs each cell as.

A grid is dozens of single-GPU cells, not one big model; a cluster runs them side by side. submitit submits each
as a SLURM job (or, with cluster="local", as a process on this machine: how the tests run it). It pickles a Python
call, so a job runs exactly the function the sequential runner calls for a cell, with no second entry point to
keep in step. Ray would serve too, but needs a running Ray cluster beside SLURM; submitit needs nothing but sbatch.

Dependencies are wait-then-submit: a job that must wait for another is submitted when that one has ended well,
and not at all when it failed (it would start from nothing). Not SLURM's --dependency: the local executor has no
dependencies, and the same loop then serves both. Every attempt's log stays under FOLDER/<job name>/ (submitit
names the files by job id), so a job submitted again beside a failed one keeps the failed one's log.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prefrec.errors import UserError

CLUSTERS = ("local", "slurm")


@dataclass
class LauncherConfig:
    """An experiment's `launcher:` section: what each job asks for. The sizes are submitit's AutoExecutor
    parameters."""
    timeout_min: int = 240
    cpus_per_task: int = 4
    gpus_per_node: int = 0
    mem_gb: int | None = None
    partition: str | None = None  # SLURM partition
    slurm: dict = field(default_factory=dict)  # more sbatch options (account, qos, constraint, ...)
    max_jobs: int = 8  # jobs submitted and unfinished at once (local: processes on this machine)
    poll_seconds: float = 5.0  # how often the launcher looks at its jobs


@dataclass(frozen=True)
class Job:
    name: str  # unique among the jobs of one run_jobs call; also the folder of its logs
    fn: Callable  # importable (submitit pickles it by reference), as are its arguments
    args: tuple
    after: str | None = None  # the name of the job that must end well before this one is submitted


def check_cluster(cluster: str) -> None:
    """One clear error, before anything is written, for a launcher this machine cannot use."""
    if cluster not in CLUSTERS:
        raise UserError(f"--launcher {cluster!r}: expected one of {list(CLUSTERS)}")
    if importlib.util.find_spec("submitit") is None:
        raise UserError(f"--launcher {cluster} submits through submitit: pip install 'prefrec[cluster]'")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch is not on PATH; run the command on a SLURM login node")


def run_jobs(jobs: list[Job], folder: Path, lc: LauncherConfig, cluster: str) -> list[str]:
    """Submit every job (at most lc.max_jobs unfinished at once; one with `after` once that job has ended well) and
    wait for all; returns the names of those that failed or were not submitted because what they wait for failed."""
    check_cluster(cluster)
    queue = [j for j in jobs if j.after is None]
    waiting: dict[str, list[Job]] = {}
    for j in jobs:
        if j.after is not None:
            waiting.setdefault(j.after, []).append(j)
    live: dict = {}  # submitit job -> our Job
    failed: list[str] = []
    while queue or live:
        while queue and len(live) < lc.max_jobs:
            job = queue.pop(0)
            live[_submit(job, folder, lc, cluster)] = job
        ended = [s for s in live if s.done()]
        if not ended:
            time.sleep(lc.poll_seconds)
            continue
        for submitted in ended:
            job = live.pop(submitted)
            if _succeeded(submitted, job):
                queue += waiting.pop(job.name, [])
            else:
                failed.append(job.name)
                failed += _not_submitted(waiting, job.name)
    return failed


def _not_submitted(waiting: dict[str, list[Job]], name: str) -> list[str]:
    """The jobs that waited, directly or through others, for the failed job `name`; said in one line."""
    out, todo = [], [name]
    while todo:
        for j in waiting.pop(todo.pop(), []):
            out.append(j.name)
            todo.append(j.name)
    if out:
        print(f"prefrec: not submitted, since {name} failed: {', '.join(out)}", file=sys.stderr)
    return out


def _submit(job: Job, folder: Path, lc: LauncherConfig, cluster: str):
    """One job through submitit's AutoExecutor; its logs under folder/<name>/, beside its earlier attempts'."""
    import submitit

    logs = Path(folder) / job.name
    executor = submitit.AutoExecutor(folder=logs, cluster=cluster)
    params = dict(name=f"prefrec-{job.name.replace('/', '-')}", timeout_min=lc.timeout_min,
                  cpus_per_task=lc.cpus_per_task, gpus_per_node=lc.gpus_per_node)
    if lc.mem_gb is not None:
        params["mem_gb"] = lc.mem_gb
    if cluster == "slurm":
        params.update(slurm_partition=lc.partition, slurm_additional_parameters=lc.slurm)
    executor.update_parameters(**params)
    submitted = executor.submit(job.fn, *job.args)
    print(f"prefrec: submitted {job.name} as job {submitted.job_id} (logs: {logs})", file=sys.stderr)
    return submitted


def _succeeded(submitted, job: Job) -> bool:
    """Whether the job ended well; a failure is one line naming it, the error's last line and the log."""
    try:
        submitted.result()
        return True
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError carry the job's own traceback text
        # its last unindented line before submitit's "You can check full logs" is the exception ("Error: text")
        trace = str(e).split("You can check full logs")[0].splitlines()
        lines = [line for line in trace if line.strip() and not line.startswith((" ", "-"))]
        print(f"prefrec: {job.name} failed (job {submitted.job_id}): {lines[-1] if lines else type(e).__name__}; "
              f"log: {submitted.paths.stderr}", file=sys.stderr)
        return False
