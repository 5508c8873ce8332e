"""HetRec-2011 Last.fm 2K: user_artists.dat + artists.dat (mixed encodings and line endings)."""

from __future__ import annotations

from pathlib import Path

from prefrec.data.readers.base import (
    Interaction,
    Log,
    _fields,
    _id,
    _lines,
    _no_rows,
    _number,
    _once,
    _order_value,
    _unknown_item,
)
from prefrec.data.titles import normalise_title
from prefrec.errors import UserError


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
        first_line: dict[str, int] = {}
        for n, line in lines:
            parts = _fields(line, "\t", 2, artists, n, "id, name, url, pictureURL", at_least=True)
            _once(first_line, parts[0].strip(), artists, n, "artist")
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
        u, i, w = _id(parts[0], ua, n, "userID"), _id(parts[1], ua, n, "artistID"), parts[2]
        if log.titles and i not in log.titles:
            raise _unknown_item(ua, n, i, artists.name)
        ts = _order_value(parts[tc], ua, n, time_column) if tc is not None else None
        log.interactions.append(Interaction(u, i, _number(w, ua, n, "weight"), ts))
    if not log.interactions:
        raise _no_rows(ua, "user-artist")
    return log
