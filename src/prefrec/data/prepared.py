"""A prepared folder, the output of `prefrec data prepare`: the one reader of its splits and its stats.json.

    FOLDER/train.jsonl, valid.jsonl, test.jsonl   one Sample per line (prefrec.samples)
    FOLDER/stats.json                             how the samples were made (protocol, counts, split sizes)
    FOLDER/items.tsv, interactions.tsv            the normalised log (the ID baselines read them)

Training, evaluation, explain and the baselines read splits through here, so a malformed file, a half-written or a
mixed folder (samples.read_jsonl checks the folder's completion marker and its split sizes) is refused the same way
everywhere, naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from prefrec.errors import UserError
from prefrec.results import is_run_dir
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
    if not is_run_dir(run) or not (run / "config.yaml").is_file():
        return None
    data = ((yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}).get("data") or {})
    folder = Path(data["dir"]) if data.get("dir") else Path(data["train"]).parent if data.get("train") else None
    return (read_stats(folder) or None) if folder is not None else None
