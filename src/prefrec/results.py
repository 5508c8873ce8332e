"""Run folders and results files: the one place that says what they hold, writes them and finds them again.

A training run folder (`prefrec train --out RUN`) holds run.json and adapter/ once it is complete. An evaluation
folder holds results.json and per_sample.jsonl (one object per test sample, the fields its task's metrics read,
prefrec.tasks). evaluate, the baselines and the experiment write them with `write_results`; the report and the model
card read them with `find_results`, `read_results` and `read_per_sample`. results.json:

    {"kind": "eval", "method": "zero-shot" | "sft" | "dpo" | "dmpo" | "sdpo" | ... | a baseline's name,
     "dataset": str, "task": str, "split": "test", "seed": int, "regime": "few-shot" | "full" | null,
     "k": int | null, "shots": int | null, "n_samples": int, "metrics": {...}, "model": str, "config": {...},
     "git_commit", "versions", "created"}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import yaml

from prefrec import io
from prefrec.errors import UserError

RESULTS = "results.json"
PER_SAMPLE = "per_sample.jsonl"
RUN_JSON = "run.json"
RUN_CONFIG = "config.yaml"  # the run's training config (prefrec.training.config.dump_config)


# ---- training run folders ----

def is_run_dir(path: str | os.PathLike) -> bool:
    """A complete training run folder: run.json (written at the end of `prefrec train`) and the final adapter/."""
    p = Path(path)
    return (p / RUN_JSON).is_file() and (p / "adapter").is_dir()


def write_run_config(run: str | os.PathLike, text: str) -> None:
    """RUN/config.yaml: the training config a run was started with, as YAML."""
    io.write_text(Path(run) / RUN_CONFIG, text)


def read_run_config(run: str | os.PathLike) -> dict | None:
    """RUN/config.yaml as a mapping of the training config's keys; None when the run has none, or it is not a YAML
    mapping."""
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    return d if isinstance(d, dict) else None


def write_run(path: str | os.PathLike, info: dict) -> None:
    """Write RUN/run.json, the last file `prefrec train` writes besides the card: with adapter/ it marks the run
    complete (`is_run_dir`)."""
    io.write_json(Path(path) / RUN_JSON, info)


def read_run(path: str | os.PathLike) -> dict:
    """A run folder's run.json; UserError naming the file when it is not a JSON object."""
    f = Path(path) / RUN_JSON
    return io.json_value(f.read_text(encoding="utf-8"), str(f), dict,
                         "{where}: not valid JSON ({msg} at line {line}, column {col}); the run is damaged",
                         "{where}: a JSON {type}, expected an object; the run is damaged")


# ---- evaluation folders ----

def has_results(folder: str | os.PathLike) -> bool:
    """Whether an evaluation folder holds its results.json (written last, so the evaluation finished)."""
    return (Path(folder) / RESULTS).exists()


def write_results(folder: str | os.PathLike, results: dict, rows: Iterable[dict] | None = None, *,
                  ascii_rows: bool = False) -> Path:
    """Write FOLDER/per_sample.jsonl (when `rows` are given) and then FOLDER/results.json, each atomically; the
    results are written last, so a folder with results.json always has its per-sample rows. An earlier results.json
    is removed before the new rows go in: killed in between, the folder has no results.json that vouches for rows it
    did not produce. `results` is written as it is (key order kept, indent 2, non-ASCII kept); `ascii_rows` escapes
    non-ASCII in the rows (the baselines have always written them so). Returns the results.json path."""
    folder = Path(folder)
    if rows is not None:
        io.remove(folder / RESULTS)  # inside io.owning: only its own
        io.write_jsonl(folder / PER_SAMPLE, rows, ensure_ascii=ascii_rows)
    io.write_json(folder / RESULTS, results)
    return folder / RESULTS


def read_results(path: str | os.PathLike) -> dict:
    """A parsed results.json; {} when it is missing or unreadable (the model card lists what it can)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def find_results(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, dict]]:
    """(path, parsed results.json) for every evaluation result under the given files or folders, sorted by path."""
    found: dict[Path, dict] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        files = [p] if p.is_file() else sorted(p.rglob(RESULTS))
        for f in files:
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{f}: not a readable results JSON ({e})") from None
            if isinstance(d, dict) and d.get("kind") == "eval":
                for key in ("dataset", "task", "method", "metrics"):
                    if key not in d:
                        raise UserError(f"{f}: results JSON lacks field '{key}'")
                found[f.resolve()] = d
    return sorted(found.items())


def per_sample_path(results_path: Path) -> Path:
    """The per_sample.jsonl beside a results.json."""
    return Path(results_path).parent / PER_SAMPLE


def read_per_sample(path: Path) -> list[dict]:
    """The rows of a per_sample.jsonl (blank lines skipped). Beside a results.json, there must be as many rows as
    its n_samples: a truncated or empty file (a copy cut short, a full disk) is refused, not bootstrapped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    want = read_results(Path(path).parent / RESULTS).get("n_samples")
    if isinstance(want, int) and want != len(rows):
        raise UserError(f"{path}: {len(rows)} rows, but {Path(path).parent / RESULTS} says n_samples = {want}; the "
                        "per-sample file is incomplete or from another evaluation: evaluate again")
    return rows
