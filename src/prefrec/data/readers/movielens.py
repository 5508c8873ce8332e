"""MovieLens: ML-1M (ratings.dat + movies.dat, latin-1) and ML-100K (GroupLens u.data + u.item, or RecBole files)."""

from __future__ import annotations

from pathlib import Path

from prefrec.data.readers.base import (
    Interaction,
    Log,
    _fields,
    _id,
    _lines,
    _movielens_encoding,
    _no_rows,
    _once,
    _pick,
    _rating_time,
    _unknown_item,
)
from prefrec.data.readers.recbole import read_recbole
from prefrec.data.titles import normalise_title
from prefrec.errors import UserError


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
        first_line: dict[str, int] = {}
        for n, line in _lines(movies, _movielens_encoding(movies)):  # published as ISO-8859-1, not UTF-8
            mid, title, _genres = _fields(line, "::", 3, movies, n, "MovieID::Title::Genres")
            _once(first_line, mid.strip(), movies, n, "movie")
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
        if not (u.isprintable() and i.isprintable() and u and i):  # the fast test of _id
            u, i = _id(u, ratings, n, "user"), _id(i, ratings, n, "item")
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
        first_line: dict[str, int] = {}
        for n, line in _lines(item, _movielens_encoding(item)):
            parts = _fields(line, "|", 3, item, n, "movie id|title|release date|...", at_least=True)
            key = parts[0].strip()
            _once(first_line, key, item, n, "movie")
            log.titles[key] = normalise_title(parts[1])
        log.catalog["items"] = len(log.titles)
    else:
        log.warnings.append(f"{data.parent}: no u.item, so item ids are used as titles")
    for n, line in _lines(data, ("latin-1",)):
        u, i, r, t = _fields(line, "\t", 4, data, n, "user id, item id, rating, timestamp")
        u, i = _id(u, data, n, "user"), _id(i, data, n, "item")
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
