"""Atomic file writes: the one owner of "temp file in the same folder, then rename" (and of folder locks).

Every output prefrec writes (samples, results, per-sample rows, TSV tables, Markdown, HTML, figures, configs) goes
through `atomic_path`, so a crash or kill mid-write never leaves a half-written file behind, and every file gets the
same permissions: those an ordinary open() would give it (0666 minus the umask; mkstemp alone would give 0600).

A folder that must land whole (a prepared data folder, an export) is filled through `atomic_folder`: a temporary
sibling, renamed into place when complete. Its files and folders get the same ordinary modes, weights included
(safetensors writes its files 0600, mkdtemp its folder 0700).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from prefrec.errors import UserError


def umask_mode() -> int:
    """The mode an ordinary open() gives a new file: 0666 minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path next to `path` to write to; on success it gets umask_mode() and is renamed onto `path`,
    on any exception (KeyboardInterrupt included) it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------------------------
# Folders that land whole or not at all

INCOMPLETE = ".prefrec-incomplete"  # inside a folder still being written (or left by a killed writer)


def check_out_folder(out: str | os.PathLike | None, flag: str = "--out") -> None:
    """`flag` must name a folder or nothing yet: neither it nor any folder above it may be a file (None: not
    given, nothing to check)."""
    if out is None:
        return
    p = Path(out)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise UserError(f"{flag} {out}: {q} is a file, not a folder")
            break


def check_complete(folder: str | os.PathLike) -> None:
    """UserError when `folder` carries the INCOMPLETE marker: its writer has not finished (or was killed)."""
    marker = Path(folder) / INCOMPLETE
    if marker.exists():
        raise UserError(f"{folder} is incomplete ({marker} is there: it is still being written, or its writer was "
                        "killed); write it again")


def ordinary_modes(folder: str | os.PathLike) -> None:
    """Give `folder`, and every folder and file under it, the modes mkdir and open() would have given them."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):  # a link's mode is its target's business
                os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a new empty folder beside `path` to fill (it holds INCOMPLETE until the block ends); on success the
    marker goes, the ordinary modes are given and the folder takes `path`'s place whole. On any exception
    (KeyboardInterrupt included) it is removed and `path` is left as it was.

    An existing non-empty `path` is replaced only with replace=True: the caller has checked that prefrec wrote it
    (nothing else may be lost). The old folder is moved aside before the new one is renamed in, so a kill between
    the two renames leaves no mixed folder (the old one then sits in a hidden `.NAME.*.old` sibling)."""
    path = Path(path)
    check_out_folder(path, flag)
    if path.is_dir() and any(path.iterdir()) and not replace:
        raise UserError(f"{flag} {path} exists and is not empty; choose another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        (tmp / INCOMPLETE).write_text("prefrec is writing this folder; until this file is gone it is incomplete\n",
                                      encoding="utf-8")
        yield tmp
        (tmp / INCOMPLETE).unlink()
        ordinary_modes(tmp)
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, path: Path) -> None:
    """Rename `new` onto `path`, moving an existing `path` aside first and deleting it after."""
    if not path.exists():
        os.replace(new, path)
        return
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    os.replace(path, aside / path.name)
    os.replace(new, path)
    shutil.rmtree(aside, ignore_errors=True)


class Locked(UserError):
    """Another live process holds the lock of a folder this process wanted to write."""


def _holder(lock: Path) -> tuple[int, str] | None:
    try:
        pid, host = lock.read_text(encoding="utf-8").split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _locked(folder, what: str, lock: Path, holder: tuple[int, str] | None) -> Locked:
    who = f"process {holder[0]} on {holder[1]}" if holder else "another process"
    return Locked(f"{what} {folder} is being written by {who}; wait for it, or delete {lock} if that process no "
                  "longer runs")


@contextmanager
def exclusive(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold `folder/.lock` while the block runs, so that two processes never write the same folder at once; raises
    Locked, naming the holder and the lock file, when another process holds it. A folder it had to create and that
    is still empty at the end (the work failed before writing anything) is removed again.

    The lock is filelock's FileLock (an OS lock, flock, on the file): the kernel drops it when its process dies, so a
    lock left by a killed process is simply taken over, with no pid-liveness guess. The file also holds "pid host"
    of its holder, for the message, and because flock does not reach across machines on a shared file system: a
    record from another host is respected (it cannot be checked from here)."""
    lock = Path(folder) / ".lock"
    created = not lock.parent.exists()
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = _holder(lock)
    if holder is not None and holder[1] != socket.gethostname():
        raise _locked(folder, what, lock, holder)
    flock = FileLock(lock, timeout=0)
    try:
        flock.acquire()
    except Timeout:
        raise _locked(folder, what, lock, _holder(lock)) from None
    try:
        with open(lock, "w", encoding="utf-8") as f:  # the same inode filelock holds: a killed holder's record goes
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        yield
    finally:
        flock.release()  # removes the file too
        lock.unlink(missing_ok=True)
        if created and lock.parent.exists() and not any(lock.parent.iterdir()):
            lock.parent.rmdir()


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> int:
    """Write already terminated lines (no newline translation); returns how many were written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            n += 1
    return n


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write one UTF-8 string as it is."""
    write_lines(path, [text])


def write_json(path: str | os.PathLike, obj, *, allow_nan: bool = True) -> None:
    """json.dump with indent 2, non-ASCII kept, and a final newline."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=allow_nan) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict], *, ensure_ascii: bool = False) -> int:
    """One JSON object a line; returns the number of rows."""
    return write_lines(path, (json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows))


def write_tsv(path: str | os.PathLike, header: str, rows: Iterable[str]) -> int:
    """A header line, then already formatted (tab-separated, newline-terminated) rows."""
    return write_lines(path, _chain([header + "\n"], rows)) - 1


def _chain(first: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


def write_figure(fig, path: str | os.PathLike, **savefig) -> Path:
    """matplotlib Figure.savefig to PNG; `savefig` passes dpi, bbox_inches and the like through."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", **savefig)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# Reading JSON written by people: one clear error naming the file (and line) and what was expected

NESTED_TOO_DEEP = "JSON nested too deeply (arrays or objects inside each other beyond Python's recursion limit)"


def json_value(text: str, where: str, want: type, bad_json: str, bad_type: str):
    """json.loads(text), which must be a `want`; else UserError. The messages are templates: bad_json gets {where},
    {msg}, {line} and {col} of the decode error, bad_type {where} and {type} (the JSON type found)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(bad_json.format(where=where, msg=e.msg, line=e.lineno, col=e.colno)) from None
    except RecursionError:
        raise UserError(f"{where}: {NESTED_TOO_DEEP}") from None
    if not isinstance(value, want):
        raise UserError(bad_type.format(where=where, type=type(value).__name__))
    return value


def json_lines(lines: Iterable[str], where: str, want: type, bad_json: str,
               bad_type: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of every non-blank line, each a JSON `want` (json_value's messages, where = FILE:LINE)."""
    for n, line in enumerate(lines, 1):
        if line.strip():
            yield n, json_value(line, f"{where}:{n}", want, bad_json, bad_type)
