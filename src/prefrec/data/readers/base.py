"""What every reader shares: the normalised Log, and line reading with one clear error per problem (gzip or plain,
CRLF or LF, encodings, fields, numbers, timestamps)."""

from __future__ import annotations

import codecs
import gzip
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from prefrec.errors import UserError


# byte-order marks of encodings no reader takes (UTF-8 and Latin-1 are read; a UTF-8 BOM is accepted)
_OTHER_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
               (codecs.BOM_UTF16_BE, "UTF-16"))


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


def _read_chunk(f, size: int) -> tuple[bytes, Exception | None]:
    """About `size` bytes from `f`, a piece at a time (read1), so that a gzip stream that breaks off still gives
    the bytes before the break: returned with the error instead of lost with it."""
    pieces, got = [], 0
    try:
        while got < size:
            piece = f.read1(size - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        return b"".join(pieces), e
    return b"".join(pieces), None


def _raw_chunks(path: Path, chunk_bytes: int = 1 << 23, whole: bool = False) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, lines without their endings), a few MB at a time: much faster than iterating a
    gzip stream line by line, and still streaming for multi-GB review files. Gzip is detected by magic bytes.
    whole: a table's last line must end with a newline; without one the file may have been cut mid-line (a u.data
    cut there read its last timestamp as 88), so it is refused. JSON lines need not: a cut one is not JSON."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        _check_encoding(path, f.read(4096) if opener is open else b"")
    n, rest = 0, b""
    with opener(path, "rb") as f:
        while True:
            chunk, error = _read_chunk(f, chunk_bytes)
            if error is not None:
                complete = n + (rest + chunk).count(b"\n")
                where = f"after line {complete:,}" if complete else "before its first line"
                raise UserError(f"{path}: truncated or corrupt gzip data {where} ({error}); download the file "
                                "again") from None
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if lines:
                yield n + 1, [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
                n += len(lines)
    if rest.strip() and whole:
        raise UserError(f"{path}:{n + 1}: the last line has no line end, so the file may be cut short (truncated "
                        "mid-line); if that line is complete, end it with a newline")
    if rest:
        yield n + 1, [rest[:-1] if rest.endswith(b"\r") else rest]
        n += 1
    if n == 0:
        raise UserError(f"{path}: empty file")


def _check_encoding(path: Path, head: bytes) -> None:
    """A text log in UTF-16 or UTF-32 (a byte-order mark, or NUL bytes: one in four or more, as ASCII text in those
    encodings has, where UTF-8 or Latin-1 text has none) is one error naming the encoding, not a "bad field" on its
    first line. A stray NUL in a UTF-8 line stays that line's field error."""
    name = next((enc for bom, enc in _OTHER_BOMS if head.startswith(bom)), None)
    if name is None and head.count(b"\x00") * 4 >= len(head) > 0:
        name = "UTF-16 or UTF-32 (it has NUL bytes)"
    if name is not None:
        raise UserError(f"{path}: the file is {name} text; prefrec reads UTF-8 or Latin-1: convert it first (for "
                        f"example `iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}-utf8{path.suffix}`)")


def _decode(raw: bytes, encodings: tuple[str, ...], path: Path, n: int) -> str:
    """Decode one line, trying each encoding in turn (LastFM mixes UTF-8 and latin-1 between files)."""
    for enc in encodings:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise UserError(f"{path}:{n}: not valid {' or '.join(encodings)} text")


def _lines(path: Path, encodings: tuple[str, ...] = ("utf-8",), whole: bool = True) -> Iterator[tuple[int, str]]:
    """Decoded, non-blank lines with their line numbers. A chunk is decoded at once when the first encoding fits
    all of it, else line by line through the encodings in turn. whole: the last line must end with a newline
    (tables; JSON lines pass False). A file of blank lines only is an empty file (readers take its first line as a
    header: a StopIteration traceback, found by tests/test_fuzz_readers.py)."""
    seen = False
    for first, raw in _raw_chunks(path, whole=whole):
        try:
            lines = b"\n".join(raw).decode(encodings[0]).split("\n")
        except UnicodeDecodeError:
            lines = [_decode(b, encodings, path, first + j) for j, b in enumerate(raw)]
        for j, line in enumerate(lines):
            if line.strip():
                seen = True
                yield first + j, line
    if not seen:
        raise UserError(f"{path}: empty file (blank lines only)")


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


# Sane ranges. A rating or a play count is a number from 0 to 1e9 (a star scale, or counts far beyond any real
# user's); a timestamp is seconds since 1970-01-01 and before 2100-01-01 (UTC). NaN, inf, 1e308 and negative values
# are refused with the file and line: kept, they would silently decide what is liked and what comes first.
MAX_VALUE = 1e9
FIRST_TIME, LAST_TIME = 0, 4_102_444_800
_BAD_ID = {"Cc", "Cs", "Zl", "Zp"}  # control characters (tab, newline, NUL), lone surrogates, line separators


def _number(text: str, path: Path, n: int, name: str, low: float = 0.0, high: float = MAX_VALUE,
            expected: str = "a number from 0 to 1e9") -> float:
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"{path}:{n}: field '{name}' is {text!r}; expected a number") from None
    if not low <= v <= high:  # NaN fails this too
        raise UserError(f"{path}:{n}: field '{name}' is {text!r}; expected {expected}")
    return v


def _timestamp(text: str, path: Path, n: int, name: str = "timestamp") -> int:
    """Seconds since the epoch, from 1970 to 2100."""
    return int(_number(text, path, n, name, FIRST_TIME, LAST_TIME, "seconds since 1970-01-01, before the year 2100"))


def _order_value(text: str, path: Path, n: int, name: str) -> int:
    """A column the user named with --order-by: any finite whole-number scale (a day index, a sequence number)."""
    return int(_number(text, path, n, name, -2.0 ** 53, 2.0 ** 53, "a finite number that orders the log in time"))


def _rating_time(r: str, t: str, path: Path, n: int) -> tuple[float, int]:
    """float(rating), int(timestamp) the fast way when both are in range; else the checked way (its clear error)."""
    try:
        rating, ts = float(r), int(t)
    except ValueError:
        rating, ts = -1.0, -1
    if 0.0 <= rating <= MAX_VALUE and FIRST_TIME <= ts <= LAST_TIME:  # NaN fails the first test
        return rating, ts
    return _number(r, path, n, "rating"), _timestamp(t, path, n)


def _id(text: str, path: Path, n: int, name: str) -> str:
    """A user or item id: non-blank text that can be written back as UTF-8 and kept on one TSV line."""
    if text.strip() and (text.isprintable() or not any(unicodedata.category(c) in _BAD_ID for c in text)):
        return text
    raise UserError(f"{path}:{n}: field '{name}' is {text!r}; expected an id (not blank; no tab, newline, control "
                    "character or undecodable byte)")


def _json_id(rec: dict, key: str, path: Path, n: int) -> str:
    """An id field of a JSON record: a string or a whole number (never a list, object, float or bool)."""
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise UserError(f"{path}:{n}: field '{key}' is a JSON {type(v).__name__}; expected a string id")
    return _id(str(v), path, n, key)


def _unknown_item(path: Path, n: int, item: str, catalogue: str) -> UserError:
    return UserError(f"{path}:{n}: field 'item' is {item!r}, which is not in {catalogue}")


def _once(first_line: dict[str, int], key: str, path: Path, n: int, what: str) -> None:
    """A catalogue names each id on one line: a second line's title would silently replace the first's."""
    if key in first_line:
        raise UserError(f"{path}:{n}: {what} id {key} appears again (first on line {first_line[key]}); expected one "
                        f"line per {what}")
    first_line[key] = n


class FirstTitles:
    """Titles from a metadata dump that repeats some records (Amazon 2018's meta files, Goodreads' books): the same
    title again is harmless; another title for an id already read keeps the first line's and is counted, for one
    warning naming the first clash (never a silent replacement)."""

    def __init__(self, titles: dict[str, str], path: Path):
        self.titles, self.path, self.first_line, self.clashes = titles, path, {}, []

    def add(self, key: str, title: str, n: int) -> None:
        if key not in self.titles:
            self.titles[key], self.first_line[key] = title, n
        elif self.titles[key] != title:
            self.clashes.append((key, self.first_line.get(key), n))

    def warnings(self) -> list[str]:
        if not self.clashes:
            return []
        key, first, again = self.clashes[0]
        return [f"{self.path}: {len(self.clashes)} line(s) give an id already read another title (first: id {key} "
                f"on lines {first} and {again}); the first line's title is kept"]


def _no_rows(path: Path, what: str) -> UserError:
    return UserError(f"{path}: no {what} rows (only a header or blank lines)")


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
