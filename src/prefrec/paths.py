"""Where prefrec keeps downloaded archives and converted models (one user cache folder), and their checksums."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """$PREFREC_CACHE, else $XDG_CACHE_HOME/prefrec, else ~/.cache/prefrec."""
    root = os.environ.get("PREFREC_CACHE")
    if root:
        p = Path(root)
    else:
        p = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prefrec"
    p.mkdir(parents=True, exist_ok=True)
    return p


def shared_data_dir() -> Path | None:
    """The offline dataset copies (../shared/data next to the repository), or $PREFREC_SHARED_DATA; None if absent."""
    env = os.environ.get("PREFREC_SHARED_DATA")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    p = Path(__file__).resolve().parents[3] / "shared" / "data"
    return p if p.is_dir() else None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (wheels and model files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
