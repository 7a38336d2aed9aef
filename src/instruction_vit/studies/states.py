"""Where each cell of a spec stands, read from its folder without running anything: ``ivit reproduce --dry-run``
lists it with what the cell reads, ``--status`` as one table, and both end with a summary line.

States: ``done`` (results under its current settings; the top-1), ``stale`` (run under other settings: what
changed), ``running`` (a live claim: host, pid or Slurm job, epoch), ``queued`` (a Slurm job waits for it),
``failed`` (why, and the log), ``to run`` (not started, interrupted: resumes, or not run last time: why) and
``cannot run`` (what it needs is not here: its data folder, or a weights file no cell makes).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cell_record import has_run, read_record
from .claims import holder_text, live_holder
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
    return states_of(list(cells(spec, runs, select, seeds, overrides, weights)), jobs)


def states_of(found: Sequence[Cell], jobs: Mapping[str, Job] | None = None) -> list[CellState]:
    """The state of each cell of ``found``."""
    ids = Identities()
    return [_state(cell, ids, (jobs or {}).get(cell.name)) for cell in found]


def _state(cell: Cell, ids: Identities, job: Job | None) -> CellState:
    reads = _reads(cell)
    record = read_record(cell.folder) or {}
    status = record.get("status")
    holder = live_holder(cell.folder)
    if holder is not None:
        return CellState(cell, RUNNING, f"{holder_text(holder)}{_epoch(cell)}", reads)
    if has_run(cell.folder):  # what the runner would refuse without --force
        if not record or status == "unreadable":
            return CellState(cell, STALE, "no readable record of the settings it was run with", reads)
        settings = cell_settings(cell, ids)
        if record.get("key") != settings_key(settings):
            changes = settings_diff(record.get("settings", {}), settings)
            shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
            return CellState(cell, STALE, shown, reads)
    if status == "done" and cell.source is not None and _source_changed(cell, record, ids):
        return CellState(cell, TO_RUN, f"its source's model changed since ({cell.source.name}): evaluated again",
                         reads)
    if status == "done" and (cell.folder / "results.json").is_file():
        top1 = _top1(cell.folder)
        return CellState(cell, DONE, "" if top1 is None else f"top-1 {top1:.2f}", reads, top1)
    if job is not None and job.state != "ended" and job.state != "unknown":
        return CellState(cell, QUEUED if job.state == "queued" else RUNNING,
                         f"Slurm job {job.job_id}" + ("" if job.state == "queued" else ", starting"), reads)
    if status == "failed":
        log = record.get("log") or (job.log if job else "")
        return CellState(cell, FAILED, record.get("reason", "failed") + (f" (log: {log})" if log else ""), reads)
    if status == "not_run":
        return CellState(cell, TO_RUN, f"not run last time: {record.get('reason', 'not run')}", reads)
    if job is not None and job.state == "ended":  # its job left the queue without recording an end
        return CellState(cell, FAILED, f"Slurm job {job.job_id} ended without finishing it"
                                       + (f" (log: {job.log})" if job.log else ""), reads)
    blocker, why = _blocker(cell, ids)
    if blocker:
        return CellState(cell, CANNOT_RUN, why, reads, blocker=blocker)
    if status == "running" and (cell.folder / "checkpoints" / "last.safetensors").is_file():
        return CellState(cell, TO_RUN, f"interrupted{_epoch(cell, ' after')}; resumes from its last checkpoint",
                         reads)
    return CellState(cell, TO_RUN, "not started", reads)


def _source_changed(cell: Cell, record: Mapping[str, Any], ids: Identities) -> bool:
    """Whether the model an evaluating cell evaluated is no longer its source's (the runner evaluates it again)."""
    return cell.source_model.is_file() and record.get("source_checkpoint") != ids.file(str(cell.source_model))


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


def _blocker(cell: Cell, ids: Identities) -> tuple[str, str]:
    """``("data", why)`` when the cell's data folder is missing, ``("weights", why)`` when its backbone weights are
    a file that is not there and that no cell of the grid makes (:attr:`~.grid.Cell.upstream`); ``("", "")`` when
    nothing is missing."""
    from ..data.sets import dataset

    data = cell.config.data
    home = dataset(data.dataset).home(data)
    if not home.is_dir():
        return "data", f"no data at {home}: set data.root"
    source = cell.config.model.pretrained if cell.needs_backbone else None
    if source not in (None, "timm") and ids.file(source).startswith("missing:") and \
            not any(Path(os.path.abspath(folder)) in Path(os.path.abspath(source)).parents
                    for folder in cell.upstream):
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
