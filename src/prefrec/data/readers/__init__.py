"""Readers of the published recommendation formats, each returning one normalised `Log`.

A `Log` is the interaction list `(user, item, rating or weight, timestamp or None)` in file order, plus an item
table `item -> title` whose titles read naturally (see titles.py). Every reader checks what it reads and raises
`UserError` naming the file, the line and the field when something is wrong: an empty file, a truncated gzip, the
wrong separator, a rating that is not a number, a rating for an item the catalogue does not have.

Formats (docs/data.md), one module and one function each (a new source: a module here and one row of READERS):
    read_ml1m        MovieLens-1M   ratings.dat (or any ratings*.dat[.gz]) + movies.dat (latin-1) [+ users.dat]
    read_ml100k      MovieLens-100K GroupLens u.data + u.item (latin-1), or the RecBole atomic files
    read_recbole     RecBole atomic files: NAME.inter [+ NAME.item], tab-separated, `name:type` header
    read_amazon      Amazon reviews 2014 (reviews_*.json[.gz], meta lines are Python literals) and 2018 (JSON lines)
    read_lastfm      HetRec-2011 Last.fm 2K: user_artists.dat + artists.dat (mixed encodings and line endings)
    read_goodreads   UCSD Goodreads interactions CSV or JSON lines [+ book_id_map.csv, goodreads_books.json[.gz]]
`read(dataset, source)` dispatches on the dataset name through READERS. Gzip is recognised by its magic bytes, so a file may be
compressed or not whatever its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prefrec.data.readers.amazon import read_amazon
from prefrec.data.readers.base import Interaction, Log
from prefrec.data.readers.goodreads import read_goodreads
from prefrec.data.readers.lastfm import read_lastfm
from prefrec.data.readers.movielens import read_ml1m, read_ml100k
from prefrec.data.readers.recbole import read_recbole
from prefrec.errors import UserError, did_you_mean

__all__ = ["DATASETS", "READERS", "Interaction", "Log", "read", "read_amazon", "read_goodreads", "read_lastfm",
           "read_ml100k", "read_ml1m", "read_recbole"]


@dataclass(frozen=True)
class Reader:
    """One source format: read(source, order column or None) -> Log; order_column: --order-by COLUMN applies (the
    format has a header to name a column of)."""
    read: Callable[[Path, str | None], Log]
    order_column: bool = False


READERS: dict[str, Reader] = {
    "ml-100k": Reader(lambda source, column: read_ml100k(source, time_column=column), order_column=True),
    "ml-1m": Reader(lambda source, column: read_ml1m(source)),
    "amazon-2014": Reader(lambda source, column: read_amazon(source, edition=2014)),
    "amazon-2018": Reader(lambda source, column: read_amazon(source, edition=2018)),
    "lastfm": Reader(lambda source, column: read_lastfm(source, time_column=column), order_column=True),
    "goodreads": Reader(lambda source, column: read_goodreads(source, time_column=column), order_column=True),
    "recbole": Reader(lambda source, column: read_recbole(source, time_column=column), order_column=True),
}
DATASETS = tuple(READERS)


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
    reader = READERS.get(dataset)
    if column and not (reader and reader.order_column):
        raise UserError(f"--order-by COLUMN applies to the formats with a header (recbole, lastfm, goodreads CSV); "
                        f"{dataset} has its own timestamps")
    if reader is None:
        raise UserError(f"--dataset {dataset!r} is not known; expected one of {', '.join(DATASETS)}"
                        f"{did_you_mean(dataset, DATASETS)}")
    log = reader.read(source, column)
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
