"""A prepared folder, the output of `prefrec data prepare`: the one reader of its splits and its stats.json.

    FOLDER/train.jsonl, valid.jsonl, test.jsonl   one Sample per line (prefrec.samples)
    FOLDER/stats.json                             how the samples were made (protocol, counts, split sizes)
    FOLDER/items.tsv, interactions.tsv            the normalised log (the ID baselines read them)

Training, evaluation, explain and the baselines read splits through here, so a malformed file, a half-written or a
mixed folder (samples.read_jsonl checks the folder's completion marker and its split sizes) is refused the same way
everywhere, naming the file.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefrec.errors import UserError
from prefrec.results import is_run_dir, read_run_config
from prefrec.samples import Sample, read_jsonl

SPLITS = ("train", "valid", "test")
STATS = "stats.json"


def split_file(source: str | os.PathLike, split: str = "test") -> Path:
    """SPLIT.jsonl of a prepared folder, or `source` itself when it is a samples file."""
    p = Path(source)
    if p.is_dir():
        if not split or Path(split).name != split or split in (".", ".."):
            raise UserError(f"split {split!r}: expected the name of a split in {p} (test, valid or train), not a "
                            "path; give another samples file with --samples")
        f = p / f"{split}.jsonl"
        if not f.is_file():
            have = sorted(x.name for x in p.glob("*.jsonl"))
            raise UserError(f"{p}: no {split}.jsonl (found: {', '.join(have) or 'no .jsonl files'}); "
                            f"expected a folder written by `prefrec data prepare`")
        return f
    if p.is_file():
        return p
    raise UserError(f"{p}: no such samples folder or file")


def read_split(source: str | os.PathLike, split: str = "test", *, required: bool = True) -> list[Sample]:
    """The samples of one split (a prepared folder's SPLIT.jsonl, or a samples file); [] for a split that is not
    there when not `required`."""
    p = Path(source)
    if not required and p.is_dir() and not (p / f"{split}.jsonl").exists():
        return []
    f = split_file(p, split)
    try:
        return read_jsonl(f)
    except ValueError as e:  # the reader names the file, line and field
        raise UserError(str(e)) from None


def read_stats(folder: str | os.PathLike) -> dict:
    """stats.json of a prepared folder ({} when the folder has none, e.g. imported peer prompts)."""
    path = Path(folder) / STATS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None


def training_stats(model: str | os.PathLike) -> dict | None:
    """stats.json of a run folder's training data (data.dir in its config.yaml), or None for a model that is not a
    run or whose data folder is gone (then: the candidates prompt)."""
    run = Path(model)
    cfg = read_run_config(run) if is_run_dir(run) else None
    if cfg is None:
        return None
    data = cfg.get("data") or {}
    folder = Path(data["dir"]) if data.get("dir") else Path(data["train"]).parent if data.get("train") else None
    return (read_stats(folder) or None) if folder is not None else None


# ---- the whole folder: splits, log and titles (the ID baselines, the item prior) ----

@dataclass
class Prepared:
    path: Path
    name: str  # dataset name (stats.json "dataset", else the folder name)
    task: str
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]
    logs: dict[str, list[Event]] | None  # user -> events, oldest first; None: the folder has no log
    titles: dict[str, str]  # item key -> title
    by_title: bool  # the samples carry no item ids: the title is the item key
    like_threshold: float = 3.0


def _read_samples(path: Path, required: bool) -> list[Sample]:
    if required and not path.exists():
        raise UserError(f"{path}: missing; a prepared folder needs train.jsonl and test.jsonl")
    return read_split(path.parent, path.stem, required=False)


@dataclass
class Event:
    item: str
    rating: float | None
    split: str  # train | valid | test | unused: per user (user-disjoint protocols) or per time period (chronological)


def _read_log(path: Path) -> dict[str, list[Event]]:
    """interactions.tsv -> user -> events sorted by timestamp (stable: file order breaks ties and empty timestamps)."""
    rows: dict[str, list[tuple[float, int, Event]]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        need = ["user", "item", "rating", "timestamp", "split"]
        if header is None or [h.strip() for h in header[:5]] != need:
            raise UserError(f"{path}:1: expected the header user<TAB>item<TAB>rating<TAB>timestamp<TAB>split, "
                            f"got {header!r}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 5:
                raise UserError(f"{path}:{lineno}: expected 5 tab-separated fields, got {len(row)}")
            user, item, rating, ts, split = row[:5]
            try:
                r = float(rating) if rating.strip() else None
                t = float(ts) if ts.strip() else float("nan")
            except ValueError:
                raise UserError(f"{path}:{lineno}: rating and timestamp must be numbers or empty, got "
                                f"{rating!r}, {ts!r}") from None
            rows.setdefault(user, []).append((t, lineno, Event(item, r, split.strip())))
    logs = {}
    for user, events in rows.items():
        if not any(np.isnan(e[0]) for e in events):
            events.sort(key=lambda e: (e[0], e[1]))
        logs[user] = [e for _, _, e in events]
    return logs


def _read_titles(path: Path) -> dict[str, str]:
    titles = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)
        for row in reader:
            if len(row) >= 2:
                titles[row[0]] = row[1]
    return titles


def load_prepared(path: str | Path, require_train: bool = True) -> Prepared:
    """Read a prepared folder. Raises UserError naming the file when something is missing or malformed.

    require_train=False: a cross-domain target, which is only tested on (its train.jsonl may be absent)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (expected the output of `prefrec data prepare`)")
    train = _read_samples(path / "train.jsonl", required=require_train)
    valid = _read_samples(path / "valid.jsonl", required=False)
    test = _read_samples(path / "test.jsonl", required=True)
    everything = train + valid + test
    if not everything:
        raise UserError(f"{path}: train.jsonl and test.jsonl hold no samples")
    found = {s.task for s in everything}
    if len(found) != 1:
        raise UserError(f"{path}: samples mix tasks {sorted(found)}; a baseline needs one task per folder")
    task = found.pop()
    by_title = not any(s.candidate_items for s in everything)
    stats = read_stats(path)
    threshold = 3.0
    for key, value in (stats.get("protocol") or {}).items():
        if "threshold" in key and isinstance(value, (int, float)):
            threshold = float(value)  # e.g. "positive_threshold": 3 means liked = rating > 3
    positive = str((stats.get("protocol") or {}).get("positive", ""))
    match = re.fullmatch(r"\s*rating\s*>\s*([0-9.]+)\s*", positive)  # the pairwise protocol's "rating > 3"
    if match:
        threshold = float(match.group(1))
    logs = None
    if (path / "interactions.tsv").exists() and not by_title:
        logs = _read_log(path / "interactions.tsv")
    titles = _read_titles(path / "items.tsv") if (path / "items.tsv").exists() else {}
    if by_title:
        for s in everything:
            for t in s.history + s.candidates:
                titles.setdefault(t, t)
    return Prepared(path=path, name=str(stats.get("dataset") or path.name), task=task, train=train, valid=valid,
                    test=test, logs=logs, titles=titles, by_title=by_title,
                    like_threshold=threshold)
