"""One owner per run folder: an advisory lock file, ``RUN/.lock``, held while a command writes the folder.

``ivit train`` (new run, ``--force``, ``--resume``), the library's ``train`` and every ``ivit reproduce`` cell take
it; a second command on a folder in use stops with a :class:`RunFolderInUseError` naming the holder (pid, host,
start time, command line, Slurm job) instead of writing the same files.

How the lock is made, and why:

* The lock file holds one JSON record (:class:`LockHolder`). It is written whole to a temporary file beside the
  lock, then published with ``os.link(tmp, .lock)``: the link fails when ``.lock`` exists, so exactly one command
  wins, and a reader never sees half a record. ``link`` is atomic on local filesystems and on NFS (where a reply
  lost and retried can report a failure after the link was made: the temporary file's link count then says it
  was). A filesystem without hard links gets ``O_CREAT | O_EXCL`` then write + fsync; a reader gives an empty or
  partial file a moment to fill.
* No ``flock``/``fcntl`` lock: on NFS those go through the lock daemon (``ENOLCK`` where it does not run) and a
  held ``flock`` is inherited by forked DataLoader workers; whether a holder is alive is read from the record
  instead (below).
* A lock whose holder is surely gone is taken over, with a log line: one from this host (same hostname, and the
  same boot id when recorded) whose pid no longer runs, runs as a zombie, or runs with another start time than
  recorded (a reused pid; Linux ``/proc/PID/stat``), or one from before this host's last reboot. A lock from
  another host is taken over only when it has a lease (below) that ran out, or when it was taken by an earlier
  run of this very Slurm job (same job id, fewer restarts: the job was requeued); otherwise the message says how
  to remove it when its holder is known to be gone. The takeover renames the stale file aside and checks it
  renamed the record it judged, so two commands taking over at once do not both win.
* A lock taken with a **lease** (``RunLock(folder, lease=600)``: the cell claims of ``ivit reproduce``) records
  it, and a thread of the holder refreshes the lock file's mtime (its heartbeat) every tenth of the lease. A lock
  whose heartbeat is older than its lease is stale on any host: its holder is dead, frozen or cut off (the file's
  mtime is set by the filesystem's clock, so hosts' clocks may differ by less than the lease). A holder that finds
  its lock taken over (it was frozen for longer than the lease) stops its main thread, so that one command
  writes the folder. A lock without a lease (``ivit train``) never expires this way: it promised no heartbeat.
* The lock is released on exit (``with``, ``finally``: exceptions and Ctrl-C included). While it is held, SIGTERM
  (``kill``, Slurm's end of job, torchrun stopping its workers) raises ``SystemExit(143)`` so the lock is removed
  too, when the process has no SIGTERM handler of its own. A SIGKILL leaves the lock, which the next command on
  this host takes over.
* A process that already holds a folder's lock may take it again (``ivit reproduce`` holds a cell's folder, then
  trains into it): the inner lock is a no-op.

The cell claims (:mod:`instruction_vit.studies.claims`) are these locks with a lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import RunFolderError
from ..files import pid_alive, process_stat

logger = logging.getLogger(__name__)

#: The lock's file name in a run folder (a run file: :data:`~.run_folder.RUN_ENTRIES`; never part of a model folder).
LOCK_NAME = ".lock"
#: A lock file larger than this is no lock this package wrote: it is not read.
MAX_LOCK_BYTES = 64 * 1024
#: How long an empty or partial lock file counts as being written (filesystems without hard links only).
FILLING_SECONDS = 5.0
#: How many times :meth:`RunLock.acquire` looks again after a lock vanished, was taken over or was being written.
ATTEMPTS = 50
_SHOWN_COMMAND = 120
#: The heartbeat refreshes a leased lock this many times per lease (and at most every minute).
BEATS_PER_LEASE = 10


def is_lock_entry(name: str) -> bool:
    """Whether a run folder entry belongs to the lock (the lock, or a temporary file of its making)."""
    return name == LOCK_NAME or name.startswith(LOCK_NAME + ".")


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run folder: the record in its lock file."""

    host: str
    pid: int
    started: str  # ISO 8601, local time with its offset
    command: str
    slurm_job_id: str | None = None
    pid_start: int | None = None  # the process's start time (clock ticks after boot, /proc/PID/stat): a reused pid
    boot_id: str | None = None  # the host's boot id: a lock from before a reboot is stale
    token: str = ""  # this acquisition's id: release removes only its own lock
    lease: float | None = None  # seconds: the holder refreshes the file's mtime; older than this, it is stale
    slurm_restarts: int | None = None  # SLURM_RESTART_COUNT: a requeued job's earlier run held it with fewer
    readable: bool = True  # False: a lock file that could not be read as a record

    @classmethod
    def this_process(cls, lease: float | None = None) -> LockHolder:
        pid = os.getpid()
        stat = process_stat(pid)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        job = _slurm_job()
        return cls(host=socket.gethostname(), pid=pid, started=started, command=command_line(), slurm_job_id=job,
                   pid_start=stat[1] if stat else None, boot_id=_boot_id(), token=uuid.uuid4().hex, lease=lease,
                   slurm_restarts=_slurm_restarts() if job else None)

    def to_bytes(self) -> bytes:
        record = {k: v for k, v in dataclasses.asdict(self).items() if k != "readable" and v is not None}
        return (json.dumps(record, indent=2) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> LockHolder:
        """The record in ``data``; one that is not a record of ours is an unreadable holder (its content is not
        repeated anywhere)."""
        try:
            record = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser's depth
            return UNREADABLE
        if not isinstance(record, dict):
            return UNREADABLE
        pid, host = record.get("pid"), record.get("host")
        if type(pid) is not int or pid <= 0 or not isinstance(host, str) or not host:
            return UNREADABLE
        text = {k: record.get(k) if isinstance(record.get(k), str) else None
                for k in ("started", "command", "slurm_job_id", "boot_id", "token")}
        pid_start, lease, restarts = record.get("pid_start"), record.get("lease"), record.get("slurm_restarts")
        return cls(host=host, pid=pid, started=text["started"] or "?", command=text["command"] or "?",
                   slurm_job_id=text["slurm_job_id"], pid_start=pid_start if type(pid_start) is int else None,
                   boot_id=text["boot_id"], token=text["token"] or "",
                   lease=float(lease) if type(lease) in (int, float) and lease > 0 else None,
                   slurm_restarts=restarts if type(restarts) is int else None)

    def same_process(self, other: LockHolder) -> bool:
        """Whether both records name one process (same host, pid and start time)."""
        return self.readable and other.readable and (self.host, self.pid, self.pid_start) == \
            (other.host, other.pid, other.pid_start)

    def describe(self) -> str:
        """``pid 1234 on host H since 2026-12-04 18:00:00 (ivit train ...; Slurm job 42)``, from printable text."""
        command = _printable(self.command)
        if len(command) > _SHOWN_COMMAND:
            command = command[:_SHOWN_COMMAND - 3] + "..."
        slurm = f"; Slurm job {_printable(self.slurm_job_id)}" if self.slurm_job_id else ""
        return f"pid {self.pid} on host {_printable(self.host)} since {_when(self.started)} ({command}{slurm})"


#: A lock file that is not a record (empty, partial, too large, not JSON, or without a host and pid).
UNREADABLE = LockHolder(host="", pid=0, started="?", command="?", readable=False)


class RunFolderInUseError(RunFolderError):
    """Another command holds the run folder's lock; the message names it and what to do."""

    def __init__(self, folder: Path, holder: LockHolder, message: str | None = None):
        self.folder, self.holder = folder, holder
        lock = folder / LOCK_NAME
        if message is None and not holder.readable:
            message = (f"run folder {folder} is locked by {lock}, which cannot be read (another command may be "
                       f"taking it right now); if no command is using the folder, delete {lock} and run again")
        elif message is None:
            where = "" if holder.host == socket.gethostname() else \
                f" (it runs on another host: check there{', or with squeue' if holder.slurm_job_id else ''})"
            message = (f"run folder {folder} is in use by {holder.describe()}; wait for it to finish, or if that "
                       f"process is gone{where}, delete {lock} and run again")
        super().__init__(message)


class RunLock:
    """The advisory lock of one run folder: ``with RunLock(folder): ...`` holds it for the block.

    :meth:`acquire` creates the folder if needed and takes the lock, taking over a stale one (:meth:`is_stale`),
    or raises :class:`RunFolderInUseError`; :meth:`release` removes it (and the folder, if acquire created it and
    it is empty again). ``log`` receives the takeover line. With a ``lease`` (seconds) the lock is kept alive by a
    heartbeat while it is held, and expires for everyone when the heartbeat stops for longer."""

    def __init__(self, folder: str | Path, log: Callable[[str], Any] | None = None, lease: float | None = None):
        if lease is not None and lease <= 0:
            raise ValueError(f"a lock's lease must be positive, not {lease}")
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.lease = lease
        self._log = log or logger.info
        self._me: LockHolder | None = None
        self._nested = False
        self._created_folder = False
        self._previous_handlers: dict[int, tuple[Any, Any]] = {}  # signal: (its handler before, ours)
        self._heartbeat: _Heartbeat | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (or runs inside a holder in this process)."""
        return self._me is not None or self._nested

    def holder(self) -> LockHolder | None:
        """Who holds the folder now: ``None`` when nobody does, :data:`UNREADABLE` for a file that is no record."""
        data = self._read()
        return None if data is None else LockHolder.parse(data)

    def is_stale(self, holder: LockHolder) -> bool:
        """Whether ``holder`` is surely gone: its lease ran out (no heartbeat for longer than the lease it
        recorded, on any host); an earlier run of this Slurm job held it (the job was requeued); or on this host
        (hostname, and boot id when both are known) it no longer runs (or its pid now belongs to a process
        started at another time), or it was written before this host last booted."""
        return self.why_stale(holder) is not None

    def why_stale(self, holder: LockHolder) -> str | None:
        """Why ``holder`` is surely gone (:meth:`is_stale`), or ``None`` while it may be alive."""
        if not holder.readable:
            return None
        age = self.heartbeat_age()
        if holder.lease is not None and age > holder.lease:
            return f"whose heartbeat stopped {age:.0f} s ago (lease {holder.lease:g} s)"
        if _earlier_run_of_this_job(holder):
            return "an earlier run of this Slurm job (requeued since)"
        if holder.host != socket.gethostname():
            return None
        boot = _boot_id()
        if holder.boot_id and boot and holder.boot_id != boot:
            # Written before this host's boot: from before a reboot. Written since: another machine of the same
            # name (cloned VMs, containers given one --hostname) holds it, alive as far as anyone here can tell.
            return "from before this host rebooted" if self._written_before_boot() else None
        return None if pid_alive(holder.pid, holder.pid_start) else "which no longer runs"

    def _written_before_boot(self) -> bool:
        booted = _boot_time()
        try:
            return booted is not None and self.path.stat().st_mtime < booted
        except FileNotFoundError:
            return False

    def heartbeat_age(self) -> float:
        """Seconds since the lock file was last written or refreshed (0 when there is none)."""
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except FileNotFoundError:
            return 0.0

    @property
    def lost(self) -> bool:
        """Whether another command took this lock over while it was held (its heartbeat found it replaced)."""
        return self._heartbeat is not None and self._heartbeat.lost

    def acquire(self) -> RunLock:
        if self.held:
            raise RuntimeError(f"the lock of {self.folder} is already held by this RunLock")
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        me = LockHolder.this_process(self.lease)
        try:
            self._acquire(me)
        except BaseException:
            self._remove_created_folder()
            raise
        return self

    def _acquire(self, me: LockHolder) -> None:
        for _ in range(ATTEMPTS):
            if self._publish(me):
                self._me = me
                self._catch_signals()
                if self.lease is not None:
                    self._heartbeat = _Heartbeat(self, me.token, min(60.0, self.lease / BEATS_PER_LEASE))
                    self._heartbeat.start()
                return
            data = self._read()
            if data is None:  # released between our try and our look: try again
                continue
            holder = LockHolder.parse(data)
            if holder.same_process(me):  # this process holds it already (a reproduce cell, then its training)
                self._nested = True
                return
            if not holder.readable and self._filling():
                time.sleep(0.1)
                continue
            why = self.why_stale(holder)
            if why is not None:
                if self._take_over(data):
                    self._log(f"{self.folder}: took over the lock of {holder.describe()}, {why}")
                continue
            raise RunFolderInUseError(self.folder, holder)
        raise RunFolderInUseError(self.folder, self.holder() or UNREADABLE)

    def release(self) -> None:
        """Remove the lock if this object holds it (a lock someone replaced by hand is left to its new holder)."""
        if self._nested:
            self._nested = False
            return
        if self._me is None:
            return
        me, self._me = self._me, None
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._restore_signals()
        data = self._read()
        if data is not None and LockHolder.parse(data).token == me.token:
            self.path.unlink(missing_ok=True)
        elif data is not None:
            logger.warning(f"{self.folder}: its lock was replaced while this command held it; left as it is")
        self._remove_created_folder()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        lost = self.lost
        self.release()
        if lost and kind is KeyboardInterrupt:  # the heartbeat stopped the main thread: say why
            raise self.taken_over_error()

    def taken_over_error(self) -> RunFolderInUseError:
        """What stopped a holder whose leased lock another command took over."""
        return RunFolderInUseError(self.folder, self.holder() or UNREADABLE, (
            f"{self.folder}: this command did not refresh its lock for longer than its lease ({self.lease or 0:g} s) "
            "and another command took it over; this one stopped so that one command writes the folder"))

    def refresh(self, token: str) -> bool:
        """The heartbeat: refresh the lock file's mtime if the lock is still the one with ``token``."""
        data = self._read()
        if data is None or LockHolder.parse(data).token != token:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)
        return True

    # -- the file -------------------------------------------------------------------------------------------------
    def _read(self) -> bytes | None:
        """The lock file's bytes (``b""`` for one too large to be ours), ``None`` when there is none."""
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size > MAX_LOCK_BYTES:
                    return b""
                return f.read(MAX_LOCK_BYTES + 1)
        except FileNotFoundError:
            return None

    def _publish(self, me: LockHolder) -> bool:
        """Create the lock holding ``me``'s record, whole; False when a lock exists."""
        tmp = self.folder / f"{LOCK_NAME}.{me.token}.tmp"
        _write_new(tmp, me.to_bytes())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:  # NFS: a retried link whose first try made it (its reply lost) says so too
            return os.stat(tmp).st_nlink == 2
        except OSError as err:
            if os.stat(tmp).st_nlink == 2:  # NFS: the link was made, its reply lost
                return True
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            try:  # no hard links here: create exclusively, then fill (readers wait for a filling file)
                _write_new(self.path, me.to_bytes())
                return True
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)

    def _filling(self) -> bool:
        """Whether an unreadable lock file is young enough to be one still being written."""
        try:
            return time.time() - self.path.stat().st_mtime < FILLING_SECONDS
        except FileNotFoundError:
            return True

    def _take_over(self, judged: bytes) -> bool:
        """Remove the stale lock whose bytes are ``judged``. It is renamed aside first (atomic) and checked: a lock
        made by another command that took over just before is put back."""
        aside = self.folder / f"{LOCK_NAME}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            if aside.read_bytes() == judged:
                return True
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            return False
        finally:
            aside.unlink(missing_ok=True)

    def _remove_created_folder(self) -> None:
        if self._created_folder:
            self._created_folder = False
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                self.folder.rmdir()

    # -- SIGTERM ends the process through ``finally`` while the lock is held; a leased lock's heartbeat stops the
    # -- main thread with SIGINT, which a shell's background job (``cmd &``) inherits as ignored: heard again ------
    def _catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_signal)
            self._previous_handlers[signal.SIGTERM] = (signal.SIG_DFL, _exit_on_signal)
        if self.lease is not None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._previous_handlers[signal.SIGINT] = (signal.SIG_IGN, signal.default_int_handler)

    def _restore_signals(self) -> None:
        previous, self._previous_handlers = self._previous_handlers, {}
        if threading.current_thread() is threading.main_thread():
            for signum, (before, ours) in previous.items():
                if signal.getsignal(signum) is ours:  # not replaced since by someone else
                    signal.signal(signum, before)


class _Heartbeat(threading.Thread):
    """Refreshes a leased lock every ``every`` seconds while it is held; stops the main thread (KeyboardInterrupt,
    turned into a RunFolderInUseError by the lock's ``with``) when it finds the lock taken over."""

    def __init__(self, lock: RunLock, token: str, every: float):
        super().__init__(name=f"heartbeat {lock.folder}", daemon=True)
        self.lock, self.token, self.every = lock, token, every
        self.lost = False
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.every):
            try:
                kept = self.lock.refresh(self.token)
            except OSError:  # a filesystem's hiccup (NFS): the next beat tries again, well within the lease
                continue
            if not kept:
                self.lost = True
                logger.error(f"{self.lock.folder}: its lock was taken over by another command (this one did not "
                             f"refresh it for longer than its lease); stopping")
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # wakes a sleep too
                return

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join()


def _earlier_run_of_this_job(holder: LockHolder) -> bool:
    """Whether ``holder`` is an earlier run of the Slurm job this process runs in (requeued since: same job id,
    fewer restarts). Local workers inside one allocation share the job id and the restart count: never each
    other's."""
    job = _slurm_job()
    return bool(job) and holder.slurm_job_id == job and holder.slurm_restarts is not None and \
        holder.slurm_restarts < _slurm_restarts()


def _slurm_job() -> str | None:
    """This process's Slurm job as squeue and ``jobs.json`` name it: ``ARRAYJOB_TASK`` for an array task (so
    ``--status`` shows one id per cell, queued or running), else the job id; ``None`` outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID") or None


def _slurm_restarts() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    """SIGTERM while a run folder is locked: leave through ``finally`` blocks (the lock is removed), status 128+15."""
    raise SystemExit(128 + signum)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, flushed to the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def command_line() -> str:
    """This process's command line, ``ivit ...`` for the ``ivit`` command however it was started."""
    argv = list(sys.argv) or ["python"]
    first = Path(argv[0])
    if first.name == "ivit" or (first.name == "__main__.py" and first.parent.name == "instruction_vit"):
        argv[0] = "ivit"
    return shlex.join(argv)[:1000]


def _boot_time() -> float | None:
    """When this host booted (seconds since the epoch, from /proc/stat's btime), or ``None`` where unknown."""
    try:
        for line in Path("/proc/stat").read_text(encoding="ascii").splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except (OSError, ValueError):
        return None


def _printable(text: str | None) -> str:
    return "".join(c if c.isprintable() else "?" for c in (text or ""))[:1000]


def _when(started: str) -> str:
    """An ISO time as ``2026-12-04 18:00:00`` (its own clock), or the text as written."""
    try:
        return datetime.fromisoformat(started).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return _printable(started)[:40]


__all__ = ["LOCK_NAME", "LockHolder", "RunFolderInUseError", "RunLock", "is_lock_entry"]
