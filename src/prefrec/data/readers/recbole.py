"""RecBole atomic files: NAME.inter [+ NAME.item], tab-separated, `name:type` header."""

from __future__ import annotations

from pathlib import Path

from prefrec.data.readers.base import (
    Interaction,
    Log,
    _id,
    _lines,
    _no_rows,
    _number,
    _once,
    _order_value,
    _pick,
    _timestamp,
    _unknown_item,
)
from prefrec.data.titles import normalise_title, with_year
from prefrec.errors import UserError


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
    _read_items(log, item_file, folder, stem)
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
    when = _order_value if time_column else _timestamp  # a column the user named need not be seconds since 1970
    for n, line in lines:
        parts = line.split("\t")
        if len(parts) != len(cols):
            raise UserError(f"{inter}:{n}: expected {len(cols)} tab-separated fields ({', '.join(cols)}), found {len(parts)}")
        user, item = _id(parts[uc], inter, n, "user_id"), _id(parts[ic], inter, n, "item_id")
        if log.titles and item not in log.titles:
            raise _unknown_item(inter, n, item, item_file.name)
        rating = _number(parts[rc], inter, n, "rating") if rc is not None else 1.0
        ts = when(parts[tc], inter, n, time_column or "timestamp") if tc is not None else None
        log.interactions.append(Interaction(user, item, rating, ts))
    if not log.interactions:
        raise _no_rows(inter, "interaction")
    return log


def _read_items(log: Log, item_file: Path, folder: Path, stem: str) -> None:
    """Titles from NAME.item: its first column naming a title or name, with a release year appended as (YYYY)."""
    if not item_file.is_file():
        log.warnings.append(f"{folder}: no {stem}.item, so item ids are used as titles")
        return
    log.files.append(str(item_file))
    lines = _lines(item_file)
    _, header = next(lines)
    cols = _atomic_header(header, item_file)
    ic = _column(cols, ("item_id",))
    if ic is None:
        raise UserError(f"{item_file}:1: no 'item_id' column in the header {cols}")
    tc = next((j for j, c in enumerate(cols) if "title" in c or c.endswith("name")), None)
    yc = _column(cols, ("release_year", "year"))
    first_line: dict[str, int] = {}
    for n, line in lines:
        parts = line.split("\t")
        if len(parts) != len(cols):
            raise UserError(f"{item_file}:{n}: expected {len(cols)} tab-separated fields, found {len(parts)}")
        _once(first_line, parts[ic], item_file, n, "item")
        title = normalise_title(parts[tc]) if tc is not None else parts[ic]
        if not title:  # a blank title stays blank (read() names the item by its id), never " (1995)"
            log.titles[parts[ic]] = ""
            continue
        log.titles[parts[ic]] = with_year(title, parts[yc]) if yc is not None else title
    log.catalog["items"] = len(log.titles)
    if tc is None:
        log.warnings.append(f"{item_file}: no title column, so item ids are used as titles")
