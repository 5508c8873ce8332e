"""Readers of the published recommendation formats, each returning one normalised `Log`.

A `Log` is the interaction list `(user, item, rating or weight, timestamp or None)` in file order, plus an item
table `item -> title` whose titles read naturally (see titles.py). Every reader checks what it reads and raises
`UserError` naming the file, the line and the field when something is wrong: an empty file, a truncated gzip, the
wrong separator, a rating that is not a number, a rating for an item the catalogue does not have.

Formats (DESIGN §3), one function each:
    read_ml1m        MovieLens-1M   ratings.dat (or any ratings*.dat[.gz]) + movies.dat (latin-1) [+ users.dat]
    read_ml100k      MovieLens-100K GroupLens u.data + u.item (latin-1), or the RecBole atomic files
    read_recbole     RecBole atomic files: NAME.inter [+ NAME.item], tab-separated, `name:type` header
    read_amazon      Amazon reviews 2014 (reviews_*.json[.gz], meta lines are Python literals) and 2018 (JSON lines)
    read_lastfm      HetRec-2011 Last.fm 2K: user_artists.dat + artists.dat (mixed encodings and line endings)
    read_goodreads   UCSD Goodreads interactions CSV or JSON lines [+ book_id_map.csv, goodreads_books.json[.gz]]
`read(dataset, source)` dispatches on the dataset name. Gzip is recognised by its magic bytes, so a file may be
compressed or not whatever its name.
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator, NamedTuple

from prefrec.data.titles import normalise_title, unescape, with_year
from prefrec.errors import UserError

DATASETS = ("ml-100k", "ml-1m", "amazon-2014", "amazon-2018", "lastfm", "goodreads", "recbole")


class Interaction(NamedTuple):
    user: str
    item: str
    rating: float  # a star rating, or a play count for logs whose `value` is "weight"
    timestamp: int | None  # seconds since the epoch; None when the format has no time (LastFM, Goodreads CSV)


@dataclass
class Log:
    name: str  # dataset name, e.g. "ml-1m"
    domain: str  # movies | games | music | books | items: picks the prompt template
    interactions: list[Interaction]  # in file order: the tie-breaker wherever timestamps are equal
    titles: dict[str, str]  # item id -> normalised title (may hold items nobody rated)
    value: str = "rating"  # "rating" (stars, higher = liked) or "weight" (play counts, compared within a user)
    unrated: float | None = None  # a rating value that means "not rated" (Goodreads: 0); such rows are filtered
    files: list[str] = field(default_factory=list)
    catalog: dict[str, int] = field(default_factory=dict)  # side-table sizes, e.g. {"items": 3883, "users": 6040}
    warnings: list[str] = field(default_factory=list)
    has_timestamps: bool = True
    order_by: str | None = None  # what the user named as the log's time order: a column, or "file" (file order)

    def title(self, item: str) -> str:
        return self.titles.get(item) or item

    def counts(self) -> dict[str, int]:
        return {"interactions": len(self.interactions),
                "users": len({x.user for x in self.interactions}),
                "items": len({x.item for x in self.interactions})}


# ---------------------------------------------------------------------------------------------------------------
# Low-level line reading: gzip or plain, CRLF or LF, one clear error per problem


def _raw_chunks(path: Path, chunk_bytes: int = 1 << 23) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, lines without their endings), a few MB at a time: much faster than iterating a
    gzip stream line by line, and still streaming for multi-GB review files. Gzip is detected by magic bytes."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    n, rest = 0, b""
    try:
        with opener(path, "rb") as f:
            while True:
                chunk = f.read(chunk_bytes)
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                if lines:
                    yield n + 1, [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
                    n += len(lines)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: truncated or corrupt gzip data after line {n} ({e}); download the file again") from None
    if rest:
        yield n + 1, [rest[:-1] if rest.endswith(b"\r") else rest]
        n += 1
    if n == 0:
        raise UserError(f"{path}: empty file")


def _decode(raw: bytes, encodings: tuple[str, ...], path: Path, n: int) -> str:
    """Decode one line, trying each encoding in turn (LastFM mixes UTF-8 and latin-1 between files)."""
    for enc in encodings:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise UserError(f"{path}:{n}: not valid {' or '.join(encodings)} text")


def _lines(path: Path, encodings: tuple[str, ...] = ("utf-8",)) -> Iterator[tuple[int, str]]:
    """Decoded, non-blank lines with their line numbers. A chunk is decoded at once when the first encoding fits
    all of it, else line by line through the encodings in turn."""
    for first, raw in _raw_chunks(path):
        try:
            lines = b"\n".join(raw).decode(encodings[0]).split("\n")
        except UnicodeDecodeError:
            lines = [_decode(b, encodings, path, first + j) for j, b in enumerate(raw)]
        for j, line in enumerate(lines):
            if line.strip():
                yield first + j, line


def _movielens_encoding(path: Path) -> tuple[str, ...]:
    """The published MovieLens files are latin-1; a copy re-saved as UTF-8 (valid UTF-8 throughout, which latin-1
    text with accents practically never is) is read as UTF-8 instead of turning "é" into "Ã©"."""
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        for _, raw in _raw_chunks(path):
            dec.decode(b"\n".join(raw) + b"\n")
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return ("latin-1",)
    return ("utf-8-sig",)


def _fields(line: str, sep: str, want: int, path: Path, n: int, names: str, at_least: bool = False) -> list[str]:
    parts = line.split(sep)
    if len(parts) < want or (not at_least and len(parts) != want):
        seen = next((s for s in ("::", "\t", ",", "|", ";") if s != sep and s in line), None)
        hint = f"; the line looks {seen!r}-separated" if seen else ""
        raise UserError(f"{path}:{n}: expected {want} fields ({names}) separated by {sep!r}, found {len(parts)}{hint}")
    return parts


def _number(text: str, path: Path, n: int, name: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"{path}:{n}: field '{name}' is {text!r}; expected a number") from None
    if v != v:  # NaN
        raise UserError(f"{path}:{n}: field '{name}' is NaN; expected a number")
    return v


def _timestamp(text: str, path: Path, n: int, name: str = "timestamp") -> int:
    return int(_number(text, path, n, name))


def _rating_time(r: str, t: str, path: Path, n: int) -> tuple[float, int]:
    """float(rating), int(timestamp) the fast way; the checked way (with its clear error) only if that fails."""
    try:
        return float(r), int(t)
    except ValueError:
        return _number(r, path, n, "rating"), _timestamp(t, path, n)


def _unknown_item(path: Path, n: int, item: str, catalogue: str) -> UserError:
    return UserError(f"{path}:{n}: field 'item' is {item!r}, which is not in {catalogue}")


def _no_rows(path: Path, what: str) -> UserError:
    return UserError(f"{path}: no {what} rows (only a header or blank lines)")


# ---------------------------------------------------------------------------------------------------------------
# MovieLens


def _pick(folder: Path, patterns: tuple[str, ...], what: str, required: bool = True) -> Path | None:
    """The one file in `folder` matching the first pattern that matches anything."""
    for pat in patterns:
        hits = sorted(p for p in folder.glob(pat) if p.is_file())
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UserError(f"{folder}: several {what} files match {pat!r}: {[h.name for h in hits]}; pass one file")
    if required:
        raise UserError(f"{folder}: no {what} file (looked for {', '.join(patterns)})")
    return None


def read_ml1m(source: str | Path) -> Log:
    """MovieLens-1M: `UserID::MovieID::Rating::Timestamp` + `MovieID::Title::Genres` (latin-1).

    `source` is the folder, or the ratings file itself (movies.dat is then looked up beside it). Any
    `ratings*.dat[.gz]` is accepted, e.g. the partial `ratings_users0001-2999.dat.gz` copy.
    """
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    ratings = source if source.is_file() else _pick(folder, ("ratings.dat", "ratings.dat.gz", "ratings*.dat*"), "ratings")
    movies = _pick(folder, ("movies.dat", "movies.dat.gz"), "movies", required=False)
    users = _pick(folder, ("users.dat", "users.dat.gz"), "users", required=False)
    log = Log(name="ml-1m", domain="movies", interactions=[], titles={}, files=[str(ratings)])
    if movies is not None:
        log.files.append(str(movies))
        for n, line in _lines(movies, _movielens_encoding(movies)):  # published as ISO-8859-1, not UTF-8
            mid, title, _genres = _fields(line, "::", 3, movies, n, "MovieID::Title::Genres")
            log.titles[mid.strip()] = normalise_title(title)
        log.catalog["items"] = len(log.titles)
    else:
        log.warnings.append(f"{folder}: no movies.dat, so item ids are used as titles")
    if users is not None:
        log.files.append(str(users))
        log.catalog["users"] = sum(1 for _ in _lines(users, ("latin-1",)))
    append, known = log.interactions.append, (log.titles if movies is not None else None)
    for n, line in _lines(ratings, ("latin-1",)):  # the hot loop of a 1M-row file: checks inlined
        parts = line.split("::")
        if len(parts) != 4:
            _fields(line, "::", 4, ratings, n, "UserID::MovieID::Rating::Timestamp")  # raises the clear error
        u, i, r, t = parts
        if known is not None and i not in known:
            raise _unknown_item(ratings, n, i, movies.name)
        append(Interaction(u, i, *_rating_time(r, t, ratings, n)))
    if not log.interactions:
        raise _no_rows(ratings, "rating")
    return log


def _read_grouplens_100k(data: Path, item: Path | None) -> Log:
    """GroupLens ML-100K: u.data `user \\t item \\t rating \\t timestamp`; u.item `id|title|date|video|url|19 genres`."""
    log = Log(name="ml-100k", domain="movies", interactions=[], titles={}, files=[str(data)])
    if item is not None:
        log.files.append(str(item))
        for n, line in _lines(item, _movielens_encoding(item)):
            parts = _fields(line, "|", 3, item, n, "movie id|title|release date|...", at_least=True)
            log.titles[parts[0].strip()] = normalise_title(parts[1])
        log.catalog["items"] = len(log.titles)
    else:
        log.warnings.append(f"{data.parent}: no u.item, so item ids are used as titles")
    for n, line in _lines(data, ("latin-1",)):
        u, i, r, t = _fields(line, "\t", 4, data, n, "user id, item id, rating, timestamp")
        if item is not None and i not in log.titles:
            raise _unknown_item(data, n, i, item.name)
        log.interactions.append(Interaction(u, i, *_rating_time(r, t, data, n)))
    if not log.interactions:
        raise _no_rows(data, "rating")
    return log


def read_ml100k(source: str | Path, *, time_column: str | None = None) -> Log:
    """MovieLens-100K from either edition: a folder (or file) with GroupLens `u.data`/`u.item`, or RecBole's
    `ml-100k.inter`/`ml-100k.item` (the copy inside the recbole 1.2.1 wheel). time_column: RecBole edition only."""
    source = Path(source)
    recbole = source.suffix == ".inter" if source.is_file() else (source.is_dir() and not (source / "u.data").is_file())
    if time_column and not recbole:
        raise UserError(f"--order-by {time_column}: GroupLens u.data has no header (its 4th field is the timestamp)")
    if source.is_file():
        if source.suffix == ".inter":
            return read_recbole(source, name="ml-100k", domain="movies", time_column=time_column)
        item = source.parent / "u.item"
        return _read_grouplens_100k(source, item if item.is_file() else None)
    if not source.is_dir():
        raise UserError(f"{source}: no such file or folder")
    if (source / "u.data").is_file():
        item = source / "u.item"
        return _read_grouplens_100k(source / "u.data", item if item.is_file() else None)
    if any(source.glob("*.inter")):
        return read_recbole(source, name="ml-100k", domain="movies", time_column=time_column)
    raise UserError(f"{source}: neither GroupLens u.data nor a RecBole .inter file found")


# ---------------------------------------------------------------------------------------------------------------
# RecBole atomic files


def _atomic_header(line: str, path: Path) -> list[str]:
    names = []
    for col in line.split("\t"):
        if ":" not in col:
            raise UserError(f"{path}:1: header field {col!r} is not 'name:type'; is this a RecBole atomic file "
                            "(tab-separated, header like 'user_id:token')?")
        names.append(col.split(":", 1)[0].strip())
    return names


def _column(names: list[str], choices: tuple[str, ...]) -> int | None:
    for c in choices:
        if c in names:
            return names.index(c)
    return None


def read_recbole(source: str | Path, *, name: str | None = None, domain: str | None = None,
                 time_column: str | None = None) -> Log:
    """RecBole atomic files: NAME.inter (user_id, item_id, rating?, timestamp?) and optional NAME.item (a title
    column: the first whose name contains 'title' or 'name'; a 'release_year'/'year' column is appended as
    '(YYYY)'). time_column: the numeric column that orders the log in time (default 'timestamp')."""
    source = Path(source)
    if source.is_file():
        inter, folder = source, source.parent
    elif source.is_dir():
        folder = source
        inter = _pick(folder, (f"{folder.name}.inter", "*.inter"), "RecBole .inter")
    else:
        raise UserError(f"{source}: no such file or folder")
    stem = inter.name[: -len(".inter")] if inter.name.endswith(".inter") else inter.stem
    item_file = folder / f"{stem}.item"
    name = name or stem
    log = Log(name=name, domain=domain or ("movies" if stem.startswith("ml-") else "items"), interactions=[],
              titles={}, files=[str(inter)])
    if item_file.is_file():
        log.files.append(str(item_file))
        lines = _lines(item_file)
        _, header = next(lines)
        cols = _atomic_header(header, item_file)
        ic = _column(cols, ("item_id",))
        if ic is None:
            raise UserError(f"{item_file}:1: no 'item_id' column in the header {cols}")
        tc = next((j for j, c in enumerate(cols) if "title" in c or c.endswith("name")), None)
        yc = _column(cols, ("release_year", "year"))
        for n, line in lines:
            parts = line.split("\t")
            if len(parts) != len(cols):
                raise UserError(f"{item_file}:{n}: expected {len(cols)} tab-separated fields, found {len(parts)}")
            title = normalise_title(parts[tc]) if tc is not None else parts[ic]
            if not title:  # a blank title stays blank (read() names the item by its id), never " (1995)"
                log.titles[parts[ic]] = ""
                continue
            if yc is not None:
                title = with_year(title, parts[yc])
            log.titles[parts[ic]] = title
        log.catalog["items"] = len(log.titles)
        if tc is None:
            log.warnings.append(f"{item_file}: no title column, so item ids are used as titles")
    else:
        log.warnings.append(f"{folder}: no {stem}.item, so item ids are used as titles")
    lines = _lines(inter)
    _, header = next(lines)
    cols = _atomic_header(header, inter)
    uc, ic = _column(cols, ("user_id",)), _column(cols, ("item_id",))
    if uc is None or ic is None:
        raise UserError(f"{inter}:1: the header needs 'user_id' and 'item_id' columns, found {cols}")
    rc, tc = _column(cols, ("rating",)), _column(cols, (time_column or "timestamp",))
    if time_column and tc is None:
        raise UserError(f"{inter}:1: --order-by {time_column}: no such column in the header {cols}")
    log.has_timestamps = tc is not None
    for n, line in lines:
        parts = line.split("\t")
        if len(parts) != len(cols):
            raise UserError(f"{inter}:{n}: expected {len(cols)} tab-separated fields ({', '.join(cols)}), found {len(parts)}")
        item = parts[ic]
        if log.titles and item not in log.titles:
            raise _unknown_item(inter, n, item, item_file.name)
        rating = _number(parts[rc], inter, n, "rating") if rc is not None else 1.0
        ts = _timestamp(parts[tc], inter, n, time_column or "timestamp") if tc is not None else None
        log.interactions.append(Interaction(parts[uc], item, rating, ts))
    if not log.interactions:
        raise _no_rows(inter, "interaction")
    return log


# ---------------------------------------------------------------------------------------------------------------
# Amazon reviews


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
    except json.JSONDecodeError as e:
        if not literal_ok:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise UserError(f"{path}:{n}: neither JSON nor a Python literal") from None
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
        for n, line in _lines(meta, ("utf-8", "latin-1")):
            rec = _record(line, meta, n, literal_ok=True)
            asin, title = rec.get("asin"), rec.get("title")
            if asin and isinstance(title, str) and title.strip():
                title = normalise_title(_TAG.sub(" ", unescape(title)))
                if title:
                    log.titles[str(asin)] = title
        log.catalog["items"] = len(log.titles)
    for path in reviews:
        for n, line in _lines(path, ("utf-8", "latin-1")):
            rec = _record(line, path, n, literal_ok=False)
            for key in ("reviewerID", "asin", "overall"):
                if key not in rec:
                    raise UserError(f"{path}:{n}: missing field '{key}'; is this an Amazon reviews file?")
            rating = _number(str(rec["overall"]), path, n, "overall")
            ts = rec.get("unixReviewTime")
            ts = _timestamp(str(ts), path, n, "unixReviewTime") if ts is not None else None
            log.interactions.append(Interaction(str(rec["reviewerID"]), str(rec["asin"]), rating, ts))
        if not log.interactions:
            raise _no_rows(path, "review")
    missing = len({x.item for x in log.interactions} - set(log.titles))
    if missing:
        where = f"{meta}" if meta is not None else "no meta_*.json[.gz] file was given or found"
        log.warnings.append(f"{missing} items have no title ({where}); their ASIN is used as the title")
    log.has_timestamps = all(x.timestamp is not None for x in log.interactions)
    return log


# ---------------------------------------------------------------------------------------------------------------
# Last.fm HetRec 2011


def read_lastfm(source: str | Path, *, time_column: str | None = None) -> Log:
    """HetRec-2011 Last.fm 2K: `user_artists.dat` (userID, artistID, weight = play count) and `artists.dat` (id,
    name, url, pictureURL). Tab-separated with a header; line endings are CRLF or LF and encodings UTF-8 or latin-1
    depending on the file, so each line is decoded as UTF-8 and, failing that, latin-1. There are no timestamps,
    and the file order (user, then artist id) is not time: the protocols give each user a seeded random order,
    unless `time_column` names a numeric column of user_artists.dat that orders it."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    ua = source if source.is_file() else folder / "user_artists.dat"
    artists = folder / "artists.dat"
    log = Log(name="lastfm", domain="music", interactions=[], titles={}, value="weight", files=[str(ua)],
              has_timestamps=False)
    if artists.is_file():
        log.files.append(str(artists))
        lines = _lines(artists, ("utf-8", "latin-1"))
        next(lines)  # header: id name url pictureURL
        for n, line in lines:
            parts = _fields(line, "\t", 2, artists, n, "id, name, url, pictureURL", at_least=True)
            log.titles[parts[0].strip()] = normalise_title(parts[1])
        log.catalog["items"] = len(log.titles)
    else:
        log.warnings.append(f"{folder}: no artists.dat, so artist ids are used as names")
    lines = _lines(ua, ("utf-8", "latin-1"))
    _, header = next(lines)
    if "\t" not in header:
        raise UserError(f"{ua}:1: expected a tab-separated header 'userID\\tartistID\\tweight', found {header[:60]!r}")
    cols = [c.strip() for c in header.split("\t")]
    tc = None
    if time_column:
        if time_column not in cols:
            raise UserError(f"{ua}:1: --order-by {time_column}: no such column in the header {cols}")
        tc = cols.index(time_column)
        log.has_timestamps = True
    for n, line in lines:
        parts = _fields(line, "\t", len(cols) if tc is not None else 3, ua, n, ", ".join(cols))
        u, i, w = parts[:3]
        if log.titles and i not in log.titles:
            raise _unknown_item(ua, n, i, artists.name)
        ts = _timestamp(parts[tc], ua, n, time_column) if tc is not None else None
        log.interactions.append(Interaction(u, i, _number(w, ua, n, "weight"), ts))
    if not log.interactions:
        raise _no_rows(ua, "user-artist")
    return log


# ---------------------------------------------------------------------------------------------------------------
# Goodreads (UCSD Book Graph)

_GOODREADS_TIME = "%a %b %d %H:%M:%S %z %Y"  # "Tue Oct 17 06:42:31 -0700 2017"


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
        lines = _lines(path)
        _, header = next(lines)
        cols = [c.strip() for c in header.split(",")]
        if "user_id" not in cols or "book_id" not in cols or "rating" not in cols:
            raise UserError(f"{path}:1: expected a comma-separated header with user_id, book_id, rating; found {header[:80]!r}")
        uc, bc, rc = cols.index("user_id"), cols.index("book_id"), cols.index("rating")
        if time_column and time_column not in cols:
            raise UserError(f"{path}:1: --order-by {time_column}: no such column in the header {cols}")
        tc = cols.index(time_column) if time_column else None
        for n, line in lines:
            parts = next(csv.reader([line]))
            if len(parts) != len(cols):
                raise UserError(f"{path}:{n}: expected {len(cols)} comma-separated fields ({header}), found {len(parts)}")
            ts = _timestamp(parts[tc], path, n, time_column) if tc is not None else None
            log.interactions.append(Interaction(parts[uc], parts[bc], _number(parts[rc], path, n, "rating"), ts))
        log.has_timestamps = tc is not None
    else:
        if time_column:
            raise UserError(f"--order-by {time_column}: the Goodreads JSON lines carry their own date_added")
        for n, line in _lines(path):
            rec = _record(line, path, n, literal_ok=False)
            for key in ("user_id", "book_id", "rating"):
                if key not in rec:
                    raise UserError(f"{path}:{n}: missing field '{key}'")
            ts = None
            when = rec.get("date_added") or rec.get("date_updated")
            if when:
                try:
                    ts = int(datetime.strptime(when, _GOODREADS_TIME).timestamp())
                except ValueError:
                    raise UserError(f"{path}:{n}: field 'date_added' is {when!r}; expected like "
                                    "'Tue Oct 17 06:42:31 -0700 2017'") from None
            log.interactions.append(Interaction(str(rec["user_id"]), str(rec["book_id"]),
                                                _number(str(rec["rating"]), path, n, "rating"), ts))
        log.has_timestamps = all(x.timestamp is not None for x in log.interactions)
    if not log.interactions:
        raise _no_rows(path, "interaction")
    books = _pick(folder, ("goodreads_books*.json*",), "books", required=False)
    if books is not None:
        id_map: dict[str, str] = {}
        map_file = folder / "book_id_map.csv"
        if is_csv and map_file.is_file():
            lines = _lines(map_file)
            next(lines)
            for n, line in lines:
                csv_id, book_id = _fields(line, ",", 2, map_file, n, "book_id_csv, book_id")
                id_map[book_id.strip()] = csv_id.strip()
        log.files.append(str(books))
        for n, line in _lines(books):
            rec = _record(line, books, n, literal_ok=False)
            bid, title = str(rec.get("book_id", "")), rec.get("title")
            if bid and isinstance(title, str) and title.strip():
                log.titles[id_map.get(bid, bid) if is_csv else bid] = normalise_title(title)
        log.catalog["items"] = len(log.titles)
    missing = len({x.item for x in log.interactions} - set(log.titles))
    if missing:
        log.warnings.append(f"{missing} books have no title (no goodreads_books*.json[.gz] with book_id_map.csv); "
                            "the book id is used as the title")
    return log


# ---------------------------------------------------------------------------------------------------------------


def _blank_titles(log: Log) -> None:
    """A catalogue row with a blank title: the item id is its title (as for a missing catalogue), with a warning
    and a count, rather than an empty or year-only title that every such item would share."""
    blank = sorted((i for i, t in log.titles.items() if not t.strip()), key=lambda i: (len(i), i))
    if blank:
        for i in blank:
            log.titles[i] = i
        shown = ", ".join(blank[:5]) + (", ..." if len(blank) > 5 else "")
        log.warnings.append(f"{len(blank)} catalogue items have a blank title ({shown}); their item id is used "
                            "as the title")


def read(dataset: str, source: str | Path, *, domain: str | None = None, order_by: str | None = None) -> Log:
    """Read `source` in the format of `dataset` (one of DATASETS).

    order_by: what orders a log in time when its format has no timestamp: "file" (the user says the file's line
    order is time order) or the name of a numeric column of the interactions file (RecBole .inter, LastFM
    user_artists.dat, Goodreads CSV). Without it such a log gets a seeded random order (protocols.sequences)."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"--source {source}: no such file or folder")
    column = order_by if order_by not in (None, "file") else None
    if column and dataset not in ("recbole", "ml-100k", "lastfm", "goodreads"):
        raise UserError(f"--order-by COLUMN applies to the formats with a header (recbole, lastfm, goodreads CSV); "
                        f"{dataset} has its own timestamps")
    if dataset == "ml-1m":
        log = read_ml1m(source)
    elif dataset == "ml-100k":
        log = read_ml100k(source, time_column=column)
    elif dataset == "recbole":
        log = read_recbole(source, time_column=column)
    elif dataset in ("amazon-2014", "amazon-2018"):
        log = read_amazon(source, edition=int(dataset[-4:]))
    elif dataset == "lastfm":
        log = read_lastfm(source, time_column=column)
    elif dataset == "goodreads":
        log = read_goodreads(source, time_column=column)
    else:
        raise UserError(f"--dataset {dataset!r} is not known; expected one of {', '.join(DATASETS)}")
    if domain:
        log.domain = domain
    _blank_titles(log)
    if log.has_timestamps and any(x.timestamp is None for x in log.interactions):
        log.has_timestamps = False
    if order_by == "file":
        if log.has_timestamps:
            raise UserError(f"--order-by file: {source} has timestamps, which order it; leave --order-by out")
        log.order_by = "file"
    elif order_by:
        log.order_by = order_by
    return log
