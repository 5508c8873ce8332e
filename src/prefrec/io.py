"""Atomic file writes: the one owner of "temp file in the same folder, then rename" (and of folder locks).

Every output prefrec writes (samples, results, per-sample rows, TSV tables, Markdown, HTML, figures, configs) goes
through `atomic_path`, so a crash or kill mid-write never leaves a half-written file behind, and every file gets the
same permissions: those an ordinary open() would give it (0666 minus the umask; mkstemp alone would give 0600).

A folder that must land whole (a prepared data folder, an export) is filled through `atomic_folder`: a temporary
sibling, renamed into place when complete. Its files and folders get the same ordinary modes, weights included
(safetensors writes its files 0600, mkdtemp its folder 0700).

Ownership (issue #43): a command writes into a user's output folder only files it records as its own. Each such
folder holds one manifest, `.prefrec-files.json`: for every file prefrec wrote there, the command that wrote it and
the file's sha256. Inside `owning(FOLDER, COMMAND)` every write through `atomic_path` (and every `remove`) under
FOLDER is checked first: an existing file is replaced only when the manifest says COMMAND wrote it and it has not
changed since; a command's own inputs are never written. A folder replaced whole (`atomic_folder(owner=...)`) is
replaced only when every file in it is recorded so. Temporary files and folders carry their writer's host and pid
in their names, so the next write of the same path removes those a killed writer left (or puts back a folder it
had moved aside), and says so.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from prefrec.errors import UserError
from prefrec.paths import sha256_file


def umask_mode() -> int:
    """The mode an ordinary open() gives a new file: 0666 minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path next to `path` to write to; on success it gets umask_mode() and is renamed onto `path`,
    on any exception (KeyboardInterrupt included) it is removed and `path` is left as it was. Inside `owning`, the
    write is checked (and recorded) first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner_of(path)
    if owner is not None:
        owner.check(path)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
        if owner is not None:
            owner.wrote(path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------------------------
# Leftovers of a killed writer: temp names say whose they are

def _temp_prefix(path: Path) -> str:
    """`.NAME.prefrec-HOST-PID-`: mkstemp/mkdtemp add a random part and the suffix (.tmp, .png, .old)."""
    return f".{path.name}.prefrec-{socket.gethostname()}-{os.getpid()}-"


def _alive(host: str, pid: int) -> bool:
    """Whether the writer may still run: always True for another host (it cannot be checked from here)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_leftovers(path: str | os.PathLike) -> list[str]:
    """Remove the temp files and folders that a killed writer of `path` left beside it; a folder it had moved aside
    (killed between atomic_folder's two renames, `path` missing) is put back instead. Says so on stderr; returns
    what it said."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.prefrec-(?P<host>.+)-(?P<pid>\d+)-[^.]*(?P<suffix>\.\w+)$")
    said = []
    for q in sorted(path.parent.iterdir()):
        m = pattern.match(q.name)
        if not m or _alive(m["host"], int(m["pid"])):
            continue
        if m["suffix"] == ".old" and not path.exists() and (q / path.name).exists():
            os.replace(q / path.name, path)
            said.append(f"put {path} back from {q} (its writer, process {m['pid']}, was killed while replacing it)")
        else:
            said.append(f"removed {q}, left by a killed prefrec (process {m['pid']})")
        if q.is_dir():
            shutil.rmtree(q, ignore_errors=True)
        else:
            q.unlink(missing_ok=True)
    for line in said:
        print(f"prefrec: {line}", file=sys.stderr)
    return said


# ---------------------------------------------------------------------------------------------------------------
# Ownership: one manifest per output folder, naming the command that wrote each file and its sha256

MANIFEST = ".prefrec-files.json"


file_digest = sha256_file  # what a manifest records of each file


def manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """FOLDER's manifest: {relative path: {"by": command, "sha256": hex}}; {} when it has none (or it is damaged:
    then nothing in the folder counts as prefrec's)."""
    try:
        files = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _save_manifest(folder: Path, files: dict[str, dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(folder / MANIFEST), suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"about": "the files prefrec wrote in this folder; prefrec never overwrites others",
                   "files": dict(sorted(files.items()))}, f, indent=1)
        f.write("\n")
    os.chmod(tmp, umask_mode())
    os.replace(tmp, folder / MANIFEST)


def is_owned(folder: str | os.PathLike, rel: str, by: str) -> bool:
    """Whether FOLDER/rel is recorded as written by command `by` and unchanged since."""
    entry = manifest(folder).get(rel)
    path = Path(folder) / rel
    return (isinstance(entry, dict) and entry.get("by") == by and path.is_file()
            and entry.get("sha256") == file_digest(path))


def not_owned(folder: str | os.PathLike, by: str) -> list[str]:
    """The files under FOLDER (relative paths) that command `by` did not write or that changed since: what replacing
    the folder whole would lose."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return [f for f in files if f not in (MANIFEST, ".lock") and not is_owned(folder, f, by)]


def record_folder(folder: str | os.PathLike, by: str) -> None:
    """Record every file under FOLDER as written by `by` (a folder written whole, by prefrec and the libraries it
    calls)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"by": by, "sha256": file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (MANIFEST, INCOMPLETE)}
    _save_manifest(folder, files)


@dataclass
class _Owner:
    """The folder a command writes into, the command's name, and what it must not touch."""
    root: Path
    by: str
    flag: str
    inputs: frozenset[Path]
    changed: dict[str, dict | None] = field(default_factory=dict)  # written (entry) or removed (None) so far

    def rel(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root))

    def check(self, path: Path) -> None:
        """UserError unless `by` may write (or remove) `path`: not an input, and new or its own unchanged file."""
        rel = self.rel(path)
        if path.resolve() in self.inputs:
            raise UserError(f"{self.flag} {self.root}: {path} is one of this command's inputs; prefrec never "
                            "overwrites its inputs: choose another folder")
        if not path.exists() or self.changed.get(rel) is not None or is_owned(self.root, rel, self.by):
            return
        raise UserError(f"{self.flag} {self.root}: {path} exists and was not written by `prefrec {self.by}` (or was "
                        "changed since); prefrec does not overwrite it: move it or choose another folder")

    def wrote(self, path: Path) -> None:
        self.note(self.rel(path), {"by": self.by, "sha256": file_digest(path)})

    def note(self, rel: str, entry: dict | None) -> None:
        """Record a write (entry) or a removal (None) at once: a later kill leaves the manifest true."""
        self.changed[rel] = entry
        files = {**manifest(self.root), rel: entry}
        _save_manifest(self.root, {k: v for k, v in files.items() if v is not None})


_OWNER: contextvars.ContextVar[_Owner | None] = contextvars.ContextVar("prefrec_owner", default=None)


def _owner_of(path: Path) -> _Owner | None:
    owner = _OWNER.get()
    if owner is None:
        return None
    try:
        path.resolve().relative_to(owner.root)
    except ValueError:
        return None
    return owner if path.name != MANIFEST else None


@contextmanager
def owning(folder: str | os.PathLike, by: str, *, names: Iterable[str] = (), inputs: Iterable = (),
           flag: str = "--out") -> Iterator[None]:
    """While the block runs, writes under FOLDER are command `by`'s: checked before (an existing file must be its
    own and unchanged, an input is never written) and recorded in FOLDER's manifest after. `names` (relative paths
    the command will write) are checked at once, so a refusal comes before the work rather than after it."""
    check_out_folder(folder, flag)
    owner = _Owner(Path(folder).resolve(), by, flag, frozenset(Path(p).resolve() for p in inputs))
    for name in names:
        owner.check(Path(folder) / name)
    token = _OWNER.set(owner)
    try:
        yield
    finally:
        _OWNER.reset(token)


def check_out_file(path: str | os.PathLike, by: str, *, force: bool, flag: str = "--out") -> None:
    """`flag FILE`: a new file; an existing one only with --force, and then only one command `by` wrote and nobody
    changed since (the manifest of its folder says so)."""
    path = Path(path)
    check_out_folder(path.parent, flag)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise UserError(f"{flag} {path} exists; choose another name, or pass --force to replace it (only a file "
                        f"`prefrec {by}` wrote)")
    if not is_owned(path.parent, path.name, by):
        raise UserError(f"{flag} {path} was not written by `prefrec {by}` (or was changed since); --force replaces "
                        "only such a file: choose another name")


def remove(path: str | os.PathLike) -> None:
    """Delete `path` if it exists; inside `owning`, only a file the command wrote (then forgotten by the manifest)."""
    path = Path(path)
    owner = _owner_of(path)
    if owner is not None and path.exists():
        owner.check(path)
        path.unlink()
        owner.note(owner.rel(path), None)
        return
    path.unlink(missing_ok=True)


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
def atomic_folder(path: str | os.PathLike, *, replace: bool = False, owner: str | None = None,
                  flag: str = "--out") -> Iterator[Path]:
    """Yield a new empty folder beside `path` to fill (it holds INCOMPLETE until the block ends); on success the
    marker goes, the ordinary modes are given and the folder takes `path`'s place whole. On any exception
    (KeyboardInterrupt included) it is removed and `path` is left as it was.

    An existing non-empty `path` is replaced only when command `owner` wrote every file in it and none changed since
    (its manifest says so; the new folder gets its own manifest), or, for prefrec's internal folders (a model cache,
    an adapter), with replace=True. The old folder is moved aside before the new one is renamed in, so a kill
    between the two renames leaves no mixed folder (the old one then sits in a hidden `.NAME.prefrec-*.old` sibling,
    which the next write of `path` puts back)."""
    path = Path(path)
    check_out_folder(path, flag)
    remove_leftovers(path)
    check_replaceable(path, owner, replace=replace, flag=flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        (tmp / INCOMPLETE).write_text("prefrec is writing this folder; until this file is gone it is incomplete\n",
                                      encoding="utf-8")
        yield tmp
        (tmp / INCOMPLETE).unlink()
        if owner is not None:
            record_folder(tmp, owner)
        ordinary_modes(tmp)
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path: str | os.PathLike, owner: str | None, *, replace: bool = False,
                      flag: str = "--out") -> None:
    """UserError unless `path` is new or empty, or replace=True, or every file in it is command `owner`'s own and
    unchanged (its manifest says so)."""
    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()) or (replace and owner is None):
        return
    if owner is None:
        raise UserError(f"{flag} {path} exists and is not empty; choose another folder")
    lost = not_owned(path, owner)
    if lost:
        names = ", ".join(lost[:5]) + (", ..." if len(lost) > 5 else "")
        raise UserError(f"{flag} {path} holds files that `prefrec {owner}` did not write there, or that changed "
                        f"since ({names}); prefrec does not replace them: move them or choose another folder")


def _swap_in(new: Path, path: Path) -> None:
    """Rename `new` onto `path`, moving an existing `path` aside first and deleting it after."""
    if not path.exists():
        os.replace(new, path)
        return
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".old"))
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
    # the folders this call creates, deepest first: removed again if the work leaves them empty
    created = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]
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
        for p in created:
            if not p.is_dir() or any(p.iterdir()):
                break
            p.rmdir()


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
    except ValueError as e:  # a number of over 4300 digits (Python's int limit), not a JSONDecodeError
        raise UserError(f"{where}: not valid JSON ({str(e).split(':')[0]})") from None
    if not isinstance(value, want):
        raise UserError(bad_type.format(where=where, type=type(value).__name__))
    return value


def json_lines(lines: Iterable[str], where: str, want: type, bad_json: str,
               bad_type: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of every non-blank line, each a JSON `want` (json_value's messages, where = FILE:LINE)."""
    for n, line in enumerate(lines, 1):
        if line.strip():
            yield n, json_value(line, f"{where}:{n}", want, bad_json, bad_type)
