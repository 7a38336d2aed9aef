"""Where each cell of a spec stands, read from its folder without running anything: ``ivit reproduce --dry-run``
lists it with what the cell reads, ``--status`` as one table, and both end with a summary line.

States: ``done`` (results under its current settings; the top-1), ``stale`` (run under other settings: what
changed), ``running`` (a live claim: host, pid or Slurm job, epoch), ``queued`` (a Slurm job waits for it),
``failed`` (why, and the log), ``to run`` (not started, interrupted: resumes, or not run last time: why) and
``cannot run`` (what it needs is not here: its data folder, or a weights file no cell makes).
"""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cell_record import has_run, read_record
from .grid import Cell, cells
from .keys import Identities, cell_settings, settings_diff, settings_key

DONE, STALE, RUNNING, QUEUED, FAILED, TO_RUN, CANNOT_RUN = \
    "done", "stale", "running", "queued", "failed", "to run", "cannot run"
#: The order of the states in the summary line.
ORDER = (TO_RUN, RUNNING, QUEUED, DONE, STALE, FAILED, CANNOT_RUN)


@dataclass(frozen=True)
class Job:
    """A scheduler's job for a cell, as the launcher recorded it and the scheduler reports it now."""

    job_id: str
    state: str  # "queued", "running", "ended" (gone from the queue), or "unknown"
    log: str = ""


@dataclass(frozen=True)
class CellState:
    """One cell's line: its state, what says more about it (top-1, holder, reason, change) and what it reads."""

    cell: Cell
    state: str
    detail: str = ""
    reads: str = ""
    top1: float | None = None
    blocker: str = ""  # for ``cannot run``: "data" or "weights"


def cell_states(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
                overrides: Sequence[str] = (), weights: Mapping[str, str] | None = None,
                jobs: Mapping[str, Job] | None = None) -> list[CellState]:
    """The state of every selected cell (``jobs``: the launcher's Slurm jobs by cell name, if any)."""
    found = list(cells(spec, runs, select, seeds, overrides, weights))
    made = functools.cache(lambda: {c.folder for c in cells(spec, runs, "", seeds, overrides, weights)})
    ids = Identities()
    return [_state(cell, ids, made, (jobs or {}).get(cell.name)) for cell in found]


def _state(cell: Cell, ids: Identities, made: Callable[[], set[Path]], job: Job | None) -> CellState:
    reads = _reads(cell)
    record = read_record(cell.folder) or {}
    key = settings_key(cell_settings(cell, ids))
    holder = _live_holder(cell.folder)
    if holder is not None:
        return CellState(cell, RUNNING, f"{holder}{_epoch(cell)}", reads)
    if has_run(cell.folder) or record.get("status") in ("done", "failed"):
        if not record or record.get("status") == "unreadable":
            return CellState(cell, STALE, "no readable record of the settings it was run with", reads)
        if record.get("key") != key:
            return CellState(cell, STALE, "; ".join(settings_diff(record.get("settings", {}),
                                                                  cell_settings(cell, ids))[:2]), reads)
    if job is not None and job.state == "queued":
        return CellState(cell, QUEUED, f"Slurm job {job.job_id}", reads)
    status = record.get("status")
    if status == "done" and (cell.folder / "results.json").is_file():
        top1 = _top1(cell.folder)
        return CellState(cell, DONE, "" if top1 is None else f"top-1 {top1:.2f}", reads, top1)
    if status == "failed":
        log = record.get("log") or (job.log if job else "")
        return CellState(cell, FAILED, record.get("reason", "failed") + (f" (log: {log})" if log else ""), reads)
    if status == "not_run":
        return CellState(cell, TO_RUN, f"not run last time: {record.get('reason', 'not run')}", reads)
    blocker, why = _blocker(cell, ids, made)
    if blocker:
        return CellState(cell, CANNOT_RUN, why, reads, blocker=blocker)
    if job is not None and job.state in ("running", "ended") and status == "running":
        return CellState(cell, FAILED, f"Slurm job {job.job_id} ended without finishing it"
                                       + (f" (log: {job.log})" if job.log else ""), reads)
    if status == "running" and (cell.folder / "checkpoints" / "last.safetensors").is_file():
        return CellState(cell, TO_RUN, f"interrupted{_epoch(cell, ' after')}; resumes from its last checkpoint",
                         reads)
    return CellState(cell, TO_RUN, "not started", reads)


def _live_holder(folder: Path) -> str | None:
    """Who holds the cell's folder, if a live process does (a stale lock is no holder: it will be taken over)."""
    from ..training.run_lock import RunLock

    lock = RunLock(folder)
    holder = lock.holder()
    if holder is None or lock.is_stale(holder):
        return None
    if not holder.readable:
        return "a lock that cannot be read"
    return f"Slurm job {holder.slurm_job_id} on {holder.host}" if holder.slurm_job_id else \
        f"pid {holder.pid} on {holder.host}"


def _epoch(cell: Cell, prefix: str = ",") -> str:
    """``, epoch 3 of 10`` from the rows of ``metrics.csv`` (nothing before the first epoch ends)."""
    try:
        with open(cell.folder / "metrics.csv", encoding="utf-8") as f:
            done = sum(1 for _ in csv.DictReader(f))
    except (OSError, csv.Error):
        return ""
    return f"{prefix} epoch {done} of {cell.config.train.epochs}" if done else ""


def _top1(folder: Path) -> float | None:
    try:
        value = json.loads((folder / "results.json").read_text(encoding="utf-8")).get("top1")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _reads(cell: Cell) -> str:
    """What the cell reads besides its data: backbone weights, the prompt encoder, or the model it evaluates."""
    if cell.source is not None:  # an evaluate column: no training, the source cell's model on other data
        return f"evaluates {cell.source.name}'s model on {cell.config.data.dataset}, no training"
    if not cell.needs_backbone:
        return f"encoder {cell.config.prompts.encoder}"
    source = cell.config.model.pretrained
    if source == "timm":
        source = "timm (timm's own sources: online, or a filled cache)"
    elif source is not None and not Path(source).expanduser().is_file():
        source = f"{source} (not there yet)"
    return f"{cell.config.model.backbone} weights {source or 'random init'}"


def _blocker(cell: Cell, ids: Identities, made: Callable[[], set[Path]]) -> tuple[str, str]:
    """``("data", why)`` when the cell's data folder is missing, ``("weights", why)`` when its backbone weights are
    a file that is not there and that no cell of the grid makes; ``("", "")`` when nothing is missing."""
    from ..data.sets import dataset

    data = cell.config.data
    home = dataset(data.dataset).home(data)
    if not home.is_dir():
        return "data", f"no data at {home}: set data.root"
    source = cell.config.model.pretrained if cell.needs_backbone else None
    if source not in (None, "timm") and ids.file(source).startswith("missing:") and \
            not any(folder in Path(source).parents for folder in made()):
        return "weights", f"no weights file {source}: give weights.{cell.config.model.backbone}=FILE"
    return "", ""


def summary(states: Iterable[CellState]) -> str:
    """``12 cell(s): 8 to run, 2 done, 1 stale, 1 cannot run (data not found 1)``."""
    states = list(states)
    counts = Counter(s.state for s in states)
    parts = [f"{counts[s]} {s}" for s in ORDER if counts[s]]
    blocked = Counter(s.blocker for s in states if s.state == CANNOT_RUN)
    if blocked:
        why = {"data": "data not found", "weights": "weights missing"}
        parts[-1] += " (" + ", ".join(f"{why[b]} {n}" for b, n in sorted(blocked.items())) + ")"
    return f"{len(states)} cell(s): " + (", ".join(parts) if parts else "none selected")
