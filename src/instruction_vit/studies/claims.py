"""Cell claims: a cell is taken before it runs, so that any number of ``ivit reproduce`` processes (local workers,
Slurm jobs, commands on other nodes sharing the runs folder) train each cell once.

A claim is the cell folder's run lock (:class:`~instruction_vit.training.run_lock.RunLock`: created exclusively,
holding host, pid, Slurm job id and start time) with a lease: while the cell runs, a heartbeat refreshes the lock
file's mtime every tenth of the lease. A live claim is respected: another process skips the cell, or waits for it
when it is the source of a cell that evaluates its model. A claim whose holder is gone is taken over and the cell
resumes from its last checkpoint: on the same host when its pid no longer runs, on any host when its heartbeat is
older than its lease (default 10 minutes, ``--lease``), and at once by the requeued run of the same Slurm job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..training.run_lock import LockHolder, RunLock
from .grid import Cell

#: Seconds a claim lives without a heartbeat (``ivit reproduce --lease``).
DEFAULT_LEASE = 600.0


@contextlib.contextmanager
def claim(cell: Cell, lease: float | None = DEFAULT_LEASE) -> Iterator[None]:
    """The cell claimed for the block (rank 0 holding it for all under torchrun or a multi-task Slurm job, as
    ``train`` holds a run folder); a live claim of another process raises
    :class:`~instruction_vit.training.run_lock.RunFolderInUseError`."""
    from ..training.distributed import init_world
    from ..training.loop import hold_run_folder

    world, dist_device = init_world(cell.config.train.device)  # a world of one outside torchrun
    with hold_run_folder(cell.folder, world, dist_device, lease):
        yield


def live_holder(folder: Path) -> LockHolder | None:
    """Who holds the claim of ``folder`` while it may be alive (a stale claim has no holder: it will be taken over;
    an unreadable claim counts as held)."""
    lock = RunLock(folder)
    holder = lock.holder()
    return None if holder is None or lock.is_stale(holder) else holder


def holder_text(holder: LockHolder) -> str:
    """``Slurm job 42 on node7`` or ``pid 123 on host``: who runs a cell, for a status line."""
    if not holder.readable:
        return "a claim that cannot be read"
    who = f"Slurm job {holder.slurm_job_id}" if holder.slurm_job_id else f"pid {holder.pid}"
    return f"{who} on {''.join(c if c.isprintable() else '?' for c in holder.host)[:100]}"
