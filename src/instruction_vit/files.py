"""File helpers shared by every layer (a leaf module): content hashes and atomic writes."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, hashed once per process for a given (path, size, modification time): a 350 MB
    weights file named by many cells is read once."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    return _sha256(str(resolved), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(target: str | Path, write: Callable[[str], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``target``, then rename it over ``target``: a kill mid-write
    leaves the previous file whole."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
