"""File helpers shared by every layer (a leaf module): content hashes, and writes that are whole or nothing.

* :func:`atomic_write` writes one file through a temporary file beside it, then renames it over the target: a kill
  leaves the previous file whole. The temporary file's name carries the writer's pid, so the next write of the same
  target removes what a killed writer left (a live writer's file is left alone).
* :func:`atomic_folder` writes a whole folder beside the target, then swaps it in: a kill leaves the old folder or
  the new one, never a mix.
* Files are written with ordinary permissions (``0o666`` less the umask: 0644 under the usual umask), as ``open``
  would make them, not the 0600 of a bare ``mkstemp``: a folder meant to be shared can be read by others.
* A full disk is one :class:`~instruction_vit.errors.DiskFullError` naming the target and the free space; the target
  is left as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import DiskFullError, RunFolderError


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
    """``write(tmp)`` to a temporary file beside ``target``, then rename it over ``target``: a kill mid-write leaves
    the previous file whole, and the next write of ``target`` removes the killed writer's temporary file."""
    target = Path(target)
    remove_stale_temporaries(target.parent, f".{target.name}.")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        with disk_space_errors(target):
            write(tmp)
            os.chmod(tmp, _file_mode())
            os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_text(target: str | Path, text: str) -> Path:
    """``text`` written to ``target`` (UTF-8) whole or not at all (:func:`atomic_write`)."""
    return atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_folder(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Write a folder whole or not at all: yields an empty temporary folder beside ``target`` to fill; when the block
    ends without error it takes ``target``'s place (on an error it is removed and ``target`` is untouched).

    An existing ``target`` is replaced only with ``replace`` (else :class:`RunFolderError`, checked before the block
    runs). On Linux the two folders are swapped in one step (``renameat2(RENAME_EXCHANGE)``), so a kill at any moment
    leaves the old folder or the new one at ``target``; elsewhere the old folder is first renamed aside, and a kill
    between the two renames leaves it there whole (``.NAME.old-PID-...``). Leftovers of killed writes are removed by
    the next write of ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not replace:
        raise RunFolderError(f"{target} exists; pass --force to replace it")
    remove_stale_temporaries(target.parent, f".{target.name}.")
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # a folder others may enter, as mkdir makes it
        with disk_space_errors(target):
            yield staging
        if target.exists():
            if not _exchange(staging, target):
                aside = target.parent / f".{target.name}.{os.getpid()}.old"
                os.replace(target, aside)
                os.replace(staging, target)
                staging = aside
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the new folder after an error, or the old one after the swap


def remove_stale_temporaries(folder: Path, prefix: str) -> None:
    """Remove ``folder``'s temporary files and folders named ``PREFIX<pid>.<...>`` whose writer (a process of this
    host) is gone: what a killed :func:`atomic_write` or :func:`atomic_folder` left."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` runs on this host (not a zombie; one of another user counts), and is the one started
    at ``start`` (clock ticks after boot, :func:`process_stat`) when that is given: a reused pid is not it."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill there ends the process: no look, it counts as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    stat = process_stat(pid)
    if stat is None:
        return True
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)


def process_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of ``pid`` from ``/proc/PID/stat``; ``None`` where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        fields = text[text.rindex(")") + 2:].split()  # the name in parentheses may hold spaces and ")"
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def disk_space_errors(target: Path) -> Iterator[None]:
    """Turn "no space left on device" (an ``OSError``, or safetensors' ``SafetensorError ... os error 28``) into a
    one-line :class:`DiskFullError` naming ``target``'s folder and its free space."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - narrowed below: only a full disk is turned into a user error
        if not _disk_full(err):
            raise
        folder = target.parent
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        raise DiskFullError(f"no space left on the disk to write {target.name} in {folder} ({free}); free some "
                            f"space or write elsewhere ({target} is as it was before)") from None


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return type(err).__name__ == "SafetensorError" and ("os error 28" in text or "No space left" in text)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` sets one to read it: a
    thread creating a file meanwhile would get no umask)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The mode ``open(..., "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    return getattr(libc, "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); ``False`` where not available."""
    call = _renameat2()
    if call is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if call(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # an old kernel or a filesystem without it
        return False
    raise OSError(code, os.strerror(code), str(b))
