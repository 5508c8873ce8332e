"""Fuzzing the rating-log readers (prefrec.data.readers, issue #43 point 5).

Each example writes a small random log in one published format (MovieLens-1M, GroupLens ML-100K, RecBole, Last.fm,
Amazon 2018, Goodreads CSV), then reads it back whole or after one mutation of one of its files. The properties:
- a well-formed log reads back exactly: every row, rating, timestamp and title as written;
- whatever the bytes, `read` raises UserError with one line naming the file, or returns a log whose every row is
  sane (printable ids, ratings 0..1e9, timestamps 1970..2100, rated items in the catalogue): never another
  exception, never a traceback;
- where the right answer is known it is the one given: CRLF line ends and gzip compression change nothing; a file
  cut short reads as the lines it still has whole (never a row made of half a line, like the timestamp 88 of a
  u.data cut mid-line); a catalogue naming one id twice with two titles is refused;
- reading writes nothing: the folder is byte for byte the same afterwards.
"""

from __future__ import annotations

import gzip
import json
import math
import string
import tempfile
import unicodedata
from pathlib import Path

import pytest
from fuzzing import fuzz, one_line, snapshot
from hypothesis import example, given
from hypothesis import strategies as st

from prefrec.data import readers as R
from prefrec.data.readers.base import FIRST_TIME, LAST_TIME, MAX_VALUE
from prefrec.data.titles import normalise_title
from prefrec.errors import UserError

IDS = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=4)
TITLES = st.text(string.ascii_letters + string.digits + " ,.'()-!?", min_size=1, max_size=24).filter(
    lambda t: normalise_title(t).strip() != "")
ROW = st.tuples(st.integers(0, 5), st.integers(FIRST_TIME, LAST_TIME))


@st.composite
def logs(draw):
    """(titles: item -> title, rows: [(user, item, rating, timestamp)]), every rated item in the catalogue."""
    items = draw(st.lists(IDS, min_size=1, max_size=5, unique=True))
    users = draw(st.lists(IDS, min_size=1, max_size=3, unique=True))
    titles = {i: draw(TITLES) for i in items}
    rows = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(items), ROW), min_size=1, max_size=10))
    return titles, [(u, i, r, t) for u, i, (r, t) in rows]


# ---- one writer per format: (folder, titles, rows, extra catalogue lines) -> (dataset, whether it keeps time) ----

def _ml1m(folder: Path, titles, rows, extra) -> tuple[str, bool]:
    cat = [f"{i}::{t}::Drama" for i, t in list(titles.items()) + extra]
    (folder / "movies.dat").write_text("".join(x + "\n" for x in cat), encoding="latin-1")
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    return "ml-1m", True


def _ml100k(folder: Path, titles, rows, extra) -> tuple[str, bool]:
    genres = "|".join("0" * 19)
    cat = [f"{i}|{t}|01-Jan-1995||http://x|{genres}" for i, t in list(titles.items()) + extra]
    (folder / "u.item").write_text("".join(x + "\n" for x in cat), encoding="latin-1")
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return "ml-100k", True


def _recbole(folder: Path, titles, rows, extra) -> tuple[str, bool]:
    cat = [f"{i}\t{t}" for i, t in list(titles.items()) + extra]
    (folder / f"{folder.name}.item").write_text("item_id:token\tmovie_title:token_seq\n" + "".join(x + "\n" for x in cat))
    (folder / f"{folder.name}.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                                 + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return "recbole", True


def _lastfm(folder: Path, titles, rows, extra) -> tuple[str, bool]:
    cat = [f"{i}\t{t}\thttp://x\thttp://y" for i, t in list(titles.items()) + extra]
    (folder / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + "".join(x + "\r\n" for x in cat))
    (folder / "user_artists.dat").write_text("userID\tartistID\tweight\n"
                                             + "".join(f"{u}\t{i}\t{r}\n" for u, i, r, _ in rows))
    return "lastfm", False


def _amazon(folder: Path, titles, rows, extra) -> tuple[str, bool]:
    meta = [json.dumps({"asin": i, "title": t}) for i, t in list(titles.items()) + extra]
    (folder / "meta_Toys.json").write_text("".join(x + "\n" for x in meta))
    reviews = [json.dumps({"reviewerID": u, "asin": i, "overall": float(r), "unixReviewTime": t}) for u, i, r, t in rows]
    (folder / "Toys.json").write_text("".join(x + "\n" for x in reviews))
    return "amazon-2018", True


def _goodreads(folder: Path, titles, rows, extra) -> tuple[str, bool]:
    books = [json.dumps({"book_id": i, "title": t}) for i, t in list(titles.items()) + extra]
    (folder / "goodreads_books.json").write_text("".join(x + "\n" for x in books))
    (folder / "book_id_map.csv").write_text("book_id_csv,book_id\n" + "".join(f"{i},{i}\n" for i in titles))
    (folder / "goodreads_interactions.csv").write_text("user_id,book_id,is_read,rating,is_reviewed\n"
                                                       + "".join(f"{u},{i},1,{r},0\n" for u, i, r, _ in rows))
    return "goodreads", False


WRITERS = {"ml-1m": _ml1m, "ml-100k": _ml100k, "recbole": _recbole, "lastfm": _lastfm, "amazon-2018": _amazon,
           "goodreads": _goodreads}
TABLES = ("ml-1m", "ml-100k", "recbole", "lastfm")  # catalogues whose ids must be unique (issue #43 point 2)


def write(folder: Path, fmt: str, titles, rows, extra=()) -> tuple[str, bool]:
    folder.mkdir(parents=True, exist_ok=True)
    return WRITERS[fmt](folder, titles, rows, list(extra))


# ---- reading, and what every outcome must satisfy ----------------------------------------------------------------

_BAD_ID = {"Cc", "Cs", "Zl", "Zp"}


def _sane(log: R.Log) -> None:
    assert log.interactions
    for x in log.interactions:
        for v in (x.user, x.item):
            assert isinstance(v, str) and v.strip() and not any(unicodedata.category(c) in _BAD_ID for c in v), x
        assert isinstance(x.rating, float) and math.isfinite(x.rating) and 0 <= x.rating <= MAX_VALUE, x
        assert x.timestamp is None or (isinstance(x.timestamp, int) and FIRST_TIME <= x.timestamp <= LAST_TIME), x
    for item, title in log.titles.items():
        assert isinstance(title, str) and title.strip() and not set(title) & set("\t\r\n"), (item, title)
        title.encode("utf-8")  # items.tsv and every prompt are UTF-8: no lone surrogate


def outcome(folder: Path, dataset: str, **kw) -> tuple:
    """("ok", rows, titles) or ("error",): a UserError of one line naming the folder's file; nothing written."""
    before = snapshot(folder)
    try:
        log = R.read(dataset, folder, **kw)
    except UserError as e:
        msg = one_line(e)
        assert str(folder) in msg or kw, msg
        result: tuple = ("error",)
    else:
        _sane(log)
        result = ("ok", [tuple(x) for x in log.interactions], dict(log.titles))
    assert snapshot(folder) == before
    return result


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _copy(folder: Path, name: str, changes: dict[str, bytes]) -> Path:
    """A copy of `folder` (beside it, named `name`) with some files' bytes replaced."""
    new = folder.parent / name / folder.name
    new.mkdir(parents=True)
    for p in _files(folder):
        (new / p.name).write_bytes(changes.get(p.name, p.read_bytes()))
    return new


FORMATS = pytest.mark.parametrize("fmt", sorted(WRITERS))


@FORMATS
@fuzz(25)
@given(log=logs())
def test_a_written_log_reads_back_exactly(fmt, log):
    titles, rows = log
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        folder = Path(tmp) / "toy"
        dataset, timed = write(folder, fmt, titles, rows)
        got = outcome(folder, dataset)
    assert got[0] == "ok"
    assert got[1] == [(u, i, float(r), t if timed else None) for u, i, r, t in rows]
    assert got[2] == {i: normalise_title(t) for i, t in titles.items()}


@FORMATS
@fuzz(25)
@given(log=logs(), change=st.sampled_from(["crlf", "gzip"]), data=st.data())
def test_crlf_line_ends_and_gzip_change_nothing(fmt, log, change, data):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        folder = Path(tmp) / "a" / "toy"
        dataset, _ = write(folder, fmt, *log)
        f = data.draw(st.sampled_from(_files(folder)), label="file")
        raw = f.read_bytes()
        new = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if change == "crlf" else gzip.compress(raw)
        assert outcome(_copy(folder, "b", {f.name: new}), dataset) == outcome(folder, dataset)


@FORMATS
@fuzz(60)
@given(log=logs(), data=st.data())
def test_a_file_cut_short_reads_as_its_whole_lines(fmt, log, data):
    """Cut at byte p: refused, or read as the file cut back to its last whole line or on to the end of the line
    cut (what remains of it says the same); never a row made of part of a line."""
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        folder = Path(tmp) / "a" / "toy"
        dataset, _ = write(folder, fmt, *log)
        f = data.draw(st.sampled_from(_files(folder)), label="file")
        raw = f.read_bytes()
        p = data.draw(st.integers(0, len(raw) - 1), label="cut at")
        whole = {raw[:raw.rfind(b"\n", 0, p) + 1], raw[:raw.find(b"\n", p) + 1]}
        allowed = [outcome(_copy(folder, f"w{k}", {f.name: w}), dataset) for k, w in enumerate(whole)]
        got = outcome(_copy(folder, "cut", {f.name: raw[:p]}), dataset)
        assert got == ("error",) or got in allowed, (raw[:p][-40:], got)


@pytest.mark.parametrize("fmt", TABLES)
@fuzz(20)
@given(log=logs(), data=st.data())
def test_a_catalogue_naming_an_id_twice_is_refused(fmt, log, data):
    titles, rows = log
    item = data.draw(st.sampled_from(sorted(titles)), label="item")
    other = data.draw(TITLES.filter(lambda t: normalise_title(t) != normalise_title(titles[item])), label="title")
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        folder = Path(tmp) / "toy"
        dataset, _ = write(folder, fmt, titles, rows, extra=[(item, other)])
        with pytest.raises(UserError, match="appears again") as e:
            R.read(dataset, folder)
    assert repr(item) in str(e.value) or f" {item} " in str(e.value)


NASTY = ["9" * 5000, '"\\ud800"', "", " ", "nan", "NaN", "inf", "-1", "1e400", "1e9", "1000000001", "4102444801", "-0",
         "0x10", "١", "\x00",
         "\u2028", "é", "\ufeff", "::", "|", "\t", ",", '"', "{", "}", "[]", "null", "\\", "\udcff"]


MUTATIONS = ["flip", "insert", "delete", "line", "field", "utf-16", "bom", "bytes"]


def _mutate(raw: bytes, data, kind: str) -> bytes:
    """One random change of `kind` to a file's bytes: a byte flipped, bytes inserted or removed, a line doubled,
    dropped or swapped, a field replaced by a nasty value, another encoding, or other bytes altogether."""
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="at")
    lines = raw.split(b"\n")
    j = data.draw(st.integers(0, len(lines) - 1), label="line")
    if kind == "flip":
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255), label="xor")]) + raw[at + 1:] if raw else b"x"
    if kind == "insert":
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=8), label="bytes") + raw[at:]
    if kind == "delete":
        return raw[:at] + raw[at + data.draw(st.integers(1, 16), label="n"):]
    if kind == "line":
        how = data.draw(st.sampled_from(["double", "drop", "swap"]), label="how")
        k = data.draw(st.integers(0, len(lines) - 1), label="other line")
        if how == "double":
            lines.insert(k, lines[j])
        elif how == "drop":
            del lines[j]
        else:
            lines[j], lines[k] = lines[k], lines[j]
        return b"\n".join(lines)
    if kind == "field":
        text = lines[j].decode("latin-1")
        for sep in ("::", "\t", "|", ",", ":"):
            if sep in text:
                parts = text.split(sep)
                parts[data.draw(st.integers(0, len(parts) - 1), label="field")] = data.draw(st.sampled_from(NASTY))
                text = sep.join(parts)
                break
        lines[j] = text.encode("utf-8", "surrogatepass")  # "\udcff" as it is: bytes that are not UTF-8
        return b"\n".join(lines)
    if kind == "utf-16":
        return raw.decode("latin-1").encode("utf-16")
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    return data.draw(st.binary(max_size=64), label="whole file")


@FORMATS
@pytest.mark.parametrize("kind", MUTATIONS)
@fuzz(20)
@given(log=logs(), data=st.data())
def test_any_mutation_gives_one_clear_error_or_a_sane_log(fmt, kind, log, data):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        folder = Path(tmp) / "a" / "toy"
        dataset, _ = write(folder, fmt, *log)
        f = data.draw(st.sampled_from(_files(folder)), label="file")
        outcome(_copy(folder, "b", {f.name: _mutate(f.read_bytes(), data, kind)}), dataset)


@fuzz(60)
@given(dataset=st.one_of(st.sampled_from(sorted(WRITERS)), st.text(max_size=12)),
       order_by=st.one_of(st.none(), st.just("file"), st.text(max_size=12)), log=logs())
@example(dataset="ml-1m", order_by="file", log=({"1": "A"}, [("u", "1", 5, 1)]))
@example(dataset="lastfm", order_by="weight", log=({"1": "A"}, [("u", "1", 5, 1)]))
def test_any_dataset_name_and_order_by_gives_one_clear_error_or_a_sane_log(dataset, order_by, log):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        folder = Path(tmp) / "toy"
        write(folder, dataset if dataset in WRITERS else "ml-1m", *log)
        outcome(folder, dataset, order_by=order_by)


INTERACTIONS = {"ml-1m": "ratings.dat", "ml-100k": "u.data", "recbole": "toy.inter", "lastfm": "user_artists.dat",
                "goodreads": "goodreads_interactions.csv"}


@pytest.mark.parametrize("fmt", sorted(INTERACTIONS))
def test_an_interactions_file_cut_mid_line_is_refused(tmp_path, fmt):
    """The fuzzer's find, as the issue saw it: a u.data cut mid-line read its last timestamp as 88."""
    folder = tmp_path / "toy"
    dataset, _ = write(folder, fmt, {"1": "Toy Story (1995)"}, [("7", "1", 4, 881250949), ("8", "1", 5, 881250949)])
    path = folder / INTERACTIONS[fmt]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(UserError, match=rf"{path.name}:\d+: the last line has no line end, so the file may be cut"):
        R.read(dataset, folder)


@pytest.mark.parametrize("name, line, message", [
    ("meta_Toys.json", '{"asin": "1", "title": "Heat \\ud800"}', r"meta_Toys\.json:1: a string holds a lone surrogate"),
    ("Toys.json", '{"reviewerID": "u", "asin": "1", "overall": ' + "9" * 5000 + "}",
     r"Toys\.json:1: not valid JSON \(Exceeds the limit \(4300 digits\)"),
    ("goodreads_books.json", '{"book_id": "1", "title": "\\udfff"}', r"goodreads_books\.json:1: a string holds")])
def test_a_huge_number_or_a_lone_surrogate_in_json_lines_is_one_clear_error(tmp_path, name, line, message):
    """The fuzzer's finds: a bare ValueError (a traceback in `prefrec data prepare`), and a title that no UTF-8 file
    can hold (items.tsv failed to write)."""
    fmt = "goodreads" if name.startswith("goodreads") else "amazon-2018"
    dataset, _ = write(tmp_path / "toy", fmt, {"1": "Heat (1995)"}, [("u", "1", 4, 881250949)])
    (tmp_path / "toy" / name).write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        R.read(dataset, tmp_path / "toy")
