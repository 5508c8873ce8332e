"""Amazon reviews 2014 (reviews_*.json[.gz], meta lines are Python literals) and 2018 (JSON lines)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from prefrec.data.readers.base import (
    FirstTitles,
    Interaction,
    Log,
    _json_id,
    _lines,
    _no_rows,
    _number,
    _timestamp,
)
from prefrec.data.titles import normalise_title, unescape
from prefrec.errors import UserError
from prefrec.io import NESTED_TOO_DEEP
from prefrec.samples import LONE_SURROGATE, has_lone_surrogate

_TAG = re.compile(r"<[^>]+>")


def _amazon_domain(path: Path) -> str:
    n = path.name.lower()
    for key, dom in (("video_games", "games"), ("movies", "movies"), ("books", "books"), ("kindle", "books"),
                     ("music", "music"), ("cds", "music")):
        if key in n:
            return dom
    return "items"


def _record(line: str, path: Path, n: int, literal_ok: bool) -> dict:
    """One JSON object per line; the 2014 metadata lines are Python dict literals instead (ast.literal_eval parses
    literals only: it cannot run code, unlike eval)."""
    try:
        obj = json.loads(line)
    except RecursionError:
        raise UserError(f"{path}:{n}: {NESTED_TOO_DEEP}") from None
    except json.JSONDecodeError as e:
        if not literal_ok:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise UserError(f"{path}:{n}: neither JSON nor a Python literal") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise UserError(f"{path}:{n}: not valid JSON ({str(e).split(':')[0]})") from None
    if "\\u" in line and has_lone_surrogate(obj):
        raise UserError(f"{path}:{n}: {LONE_SURROGATE}")
    if not isinstance(obj, dict):
        raise UserError(f"{path}:{n}: expected an object, got {type(obj).__name__}")
    return obj


def read_amazon(source: str | Path, *, edition: int = 2018, meta: str | Path | None = None) -> Log:
    """Amazon reviews (McAuley lab), 2014 or 2018 edition: JSON lines with reviewerID, asin, overall,
    unixReviewTime. `source` is a reviews file or a folder of them; titles come from a meta file (`meta` or a
    `meta_*.json[.gz]` beside the reviews). Without one, the ASIN is the title and a warning says so."""
    source = Path(source)
    if source.is_dir():
        reviews = sorted(p for p in source.iterdir() if p.is_file() and ".json" in p.name and not p.name.startswith("meta_"))
        if len(reviews) != 1:
            found = [p.name for p in reviews] or "none"
            raise UserError(f"{source}: expected one reviews *.json[.gz] file (plus an optional meta_*.json[.gz]), "
                            f"found {found}; pass the reviews file itself")
        folder = source
    elif source.is_file():
        reviews, folder = [source], source.parent
    else:
        raise UserError(f"{source}: no such file or folder")
    if meta is None:
        metas = sorted(p for p in folder.glob("meta_*.json*") if p.is_file())
        meta = metas[0] if len(metas) == 1 else None
    log = Log(name=f"amazon-{edition}", domain=_amazon_domain(reviews[0]), interactions=[], titles={},
              files=[str(p) for p in reviews])
    if meta is not None:
        meta = Path(meta)
        log.files.append(str(meta))
        titles = FirstTitles(log.titles, meta)
        for n, line in _lines(meta, ("utf-8", "latin-1"), whole=False):
            rec = _record(line, meta, n, literal_ok=True)
            asin, title = rec.get("asin"), rec.get("title")
            if asin and isinstance(title, str) and title.strip():
                title = normalise_title(_TAG.sub(" ", unescape(title)))
                if title:
                    titles.add(str(asin), title, n)
        log.warnings += titles.warnings()
        log.catalog["items"] = len(log.titles)
    for path in reviews:
        for n, line in _lines(path, ("utf-8", "latin-1"), whole=False):
            rec = _record(line, path, n, literal_ok=False)
            for key in ("reviewerID", "asin", "overall"):
                if key not in rec:
                    raise UserError(f"{path}:{n}: missing field '{key}'; is this an Amazon reviews file?")
            rating = _number(str(rec["overall"]), path, n, "overall")
            ts = rec.get("unixReviewTime")
            ts = _timestamp(str(ts), path, n, "unixReviewTime") if ts is not None else None
            user, item = _json_id(rec, "reviewerID", path, n), _json_id(rec, "asin", path, n)
            log.interactions.append(Interaction(user, item, rating, ts))
        if not log.interactions:
            raise _no_rows(path, "review")
    missing = len({x.item for x in log.interactions} - set(log.titles))
    if missing:
        where = f"{meta}" if meta is not None else "no meta_*.json[.gz] file was given or found"
        log.warnings.append(f"{missing} items have no title ({where}); their ASIN is used as the title")
    log.has_timestamps = all(x.timestamp is not None for x in log.interactions)
    return log
