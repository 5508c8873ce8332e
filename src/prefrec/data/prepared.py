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

from prefrec.errors import UserError
from prefrec.samples import Sample, read_jsonl

SPLITS = ("train", "valid", "test")
STATS = "stats.json"


def split_file(source: str | os.PathLike, split: str = "test") -> Path:
    """SPLIT.jsonl of a prepared folder, or `source` itself when it is a samples file."""
    p = Path(source)
    if p.is_dir():
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
