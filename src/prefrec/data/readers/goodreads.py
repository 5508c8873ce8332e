"""UCSD Goodreads (Book Graph): interactions CSV or JSON lines [+ book_id_map.csv, goodreads_books.json[.gz]]."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from prefrec.data.readers.amazon import _record
from prefrec.data.readers.base import (
    FirstTitles,
    FIRST_TIME,
    LAST_TIME,
    Interaction,
    Log,
    _fields,
    _id,
    _json_id,
    _lines,
    _no_rows,
    _number,
    _order_value,
    _pick,
)
from prefrec.data.titles import normalise_title
from prefrec.errors import UserError

_GOODREADS_TIME = "%a %b %d %H:%M:%S %z %Y"  # "Tue Oct 17 06:42:31 -0700 2017"


def _date(when, path: Path, n: int) -> int:
    """Seconds since the epoch of a Goodreads date ("Tue Oct 17 06:42:31 -0700 2017"), from 1970 to 2100."""
    try:
        ts = int(datetime.strptime(when, _GOODREADS_TIME).timestamp())
    except (TypeError, ValueError):
        raise UserError(f"{path}:{n}: field 'date_added' is {when!r}; expected like "
                        "'Tue Oct 17 06:42:31 -0700 2017'") from None
    if not FIRST_TIME <= ts <= LAST_TIME:
        raise UserError(f"{path}:{n}: field 'date_added' is {when!r}; expected a date from 1970 to 2100")
    return ts


def read_goodreads(source: str | Path, *, time_column: str | None = None) -> Log:
    """Goodreads interactions: the CSV (`user_id,book_id,is_read,rating,is_reviewed`, remapped ids, no time) or
    the JSON lines (`user_id, book_id, rating, date_added, …`). Rating 0 means "shelved, not rated": such rows are
    kept here (they count as raw interactions) and dropped by the protocols' first filter (`Log.unrated`).
    Titles: `goodreads_books*.json[.gz]` (book_id, title) beside the interactions, through `book_id_map.csv` for
    the CSV's remapped ids; otherwise the book id is the title and a warning says so."""
    source = Path(source)
    if source.is_dir():
        folder = source
        path = _pick(folder, ("goodreads_interactions*.csv", "goodreads_interactions*.json*", "*.csv"), "interactions")
    elif source.is_file():
        path, folder = source, source.parent
    else:
        raise UserError(f"{source}: no such file or folder")
    log = Log(name="goodreads", domain="books", interactions=[], titles={}, unrated=0.0, files=[str(path)])
    is_csv = ".csv" in path.name
    if is_csv:
        _read_csv(log, path, time_column)
    else:
        _read_json_lines(log, path, time_column)
    if not log.interactions:
        raise _no_rows(path, "interaction")
    _read_titles(log, folder, is_csv)
    missing = len({x.item for x in log.interactions} - set(log.titles))
    if missing:
        log.warnings.append(f"{missing} books have no title (no goodreads_books*.json[.gz] with book_id_map.csv); "
                            "the book id is used as the title")
    return log


def _read_csv(log: Log, path: Path, time_column: str | None) -> None:
    lines = _lines(path)
    _, header = next(lines)
    cols = [c.strip() for c in header.split(",")]
    if "user_id" not in cols or "book_id" not in cols or "rating" not in cols:
        raise UserError(f"{path}:1: expected a comma-separated header with user_id, book_id, rating; "
                        f"found {header[:80]!r}")
    uc, bc, rc = cols.index("user_id"), cols.index("book_id"), cols.index("rating")
    if time_column and time_column not in cols:
        raise UserError(f"{path}:1: --order-by {time_column}: no such column in the header {cols}")
    tc = cols.index(time_column) if time_column else None
    for n, line in lines:
        parts = next(csv.reader([line]))
        if len(parts) != len(cols):
            raise UserError(f"{path}:{n}: expected {len(cols)} comma-separated fields ({header}), found {len(parts)}")
        ts = _order_value(parts[tc], path, n, time_column) if tc is not None else None
        user, book = _id(parts[uc], path, n, "user_id"), _id(parts[bc], path, n, "book_id")
        log.interactions.append(Interaction(user, book, _number(parts[rc], path, n, "rating"), ts))
    log.has_timestamps = tc is not None


def _read_json_lines(log: Log, path: Path, time_column: str | None) -> None:
    if time_column:
        raise UserError(f"--order-by {time_column}: the Goodreads JSON lines carry their own date_added")
    for n, line in _lines(path, whole=False):
        rec = _record(line, path, n, literal_ok=False)
        for key in ("user_id", "book_id", "rating"):
            if key not in rec:
                raise UserError(f"{path}:{n}: missing field '{key}'")
        when = rec.get("date_added") or rec.get("date_updated")
        ts = _date(when, path, n) if when else None
        log.interactions.append(Interaction(_json_id(rec, "user_id", path, n), _json_id(rec, "book_id", path, n),
                                            _number(str(rec["rating"]), path, n, "rating"), ts))
    log.has_timestamps = all(x.timestamp is not None for x in log.interactions)


def _read_titles(log: Log, folder: Path, is_csv: bool) -> None:
    """Titles from goodreads_books*.json[.gz] beside the interactions (the CSV's ids through book_id_map.csv)."""
    books = _pick(folder, ("goodreads_books*.json*",), "books", required=False)
    if books is None:
        return
    id_map: dict[str, str] = {}
    map_file = folder / "book_id_map.csv"
    if is_csv and map_file.is_file():
        lines = _lines(map_file)
        next(lines)
        for n, line in lines:
            csv_id, book_id = _fields(line, ",", 2, map_file, n, "book_id_csv, book_id")
            id_map[book_id.strip()] = csv_id.strip()
    log.files.append(str(books))
    titles = FirstTitles(log.titles, books)
    for n, line in _lines(books, whole=False):
        rec = _record(line, books, n, literal_ok=False)
        bid, title = str(rec.get("book_id", "")), rec.get("title")
        if bid and isinstance(title, str) and title.strip():
            titles.add(id_map.get(bid, bid) if is_csv else bid, normalise_title(title), n)
    log.warnings += titles.warnings()
    log.catalog["items"] = len(log.titles)
