"""Running a spec's cells: :func:`run_cells` takes the selected cells in order (training cells, then the cells
that evaluate them), each under its claim (:mod:`.claims`), and records how each ended (``cell.json``).

The same pass (:func:`run_pass`) runs in the one process of ``ivit reproduce``, in each local worker
(:mod:`.workers`) and in each Slurm job (:mod:`.slurm`): a cell another process has claimed is skipped, a cell
whose model another process is training is waited for when a selected cell evaluates it, and a claim left by a
process that is gone is taken over (the cell resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ..errors import RunFolderError, UserError
from ..training.run_lock import RunFolderInUseError
from .cell_record import RECORD, finished, has_run, read_record, write_record
from .claims import DEFAULT_LEASE, claim, holder_text, live_holder
from .grid import Cell, cells, check_weights_map, run_order
from .keys import Identities, cell_settings, refuse_stale, settings_diff, settings_key, spec_changes, stale_cells

logger = logging.getLogger(__name__)
#: Seconds between looks at a source cell another process is training.
POLL_SECONDS = 5.0


@dataclass
class Outcome:
    """What a pass over cells did: the cells it ran to their end, those it skipped because another process holds
    them (with who), and those that failed (with why)."""

    ran: list[Cell] = field(default_factory=list)
    skipped: list[tuple[Cell, str]] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)


def run_cells(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
              overrides: Sequence[str] = (), force: bool = False,
              weights: Mapping[str, str] | None = None, keep_last: bool = False, *,
              lease: float = DEFAULT_LEASE, keep_going: bool = False) -> list[Cell]:
    """Run every selected cell that has no results under its current settings; returns the cells run.

    A cell is keyed by :func:`cell_settings`; a finished or interrupted cell whose key differs is refused (or, with
    ``force``, cleared and rerun from scratch). A cell whose backbone weights cannot be had is recorded as not run
    and the others go on. Finished cells keep only ``best.safetensors`` unless ``keep_last``. Evaluating cells
    (``evaluate`` columns) run after the training cells; one whose source is not done, not selected and not running
    elsewhere is refused before anything runs, one whose source was not run is recorded as not run, and one is
    rerun when its source's checkpoint changed.

    A cell runs under its claim (:mod:`.claims`, with ``lease``). A cell claimed by another command (a second
    ``ivit reproduce`` on the same runs folder) is skipped with a line naming the holder; a cell evaluating a
    model another command is training waits for it; the others go on, then a :class:`CellsInUseError` (a
    RunFolderError; ``.done`` holds the cells run) says which were skipped. A cell that fails is recorded as
    failed (``cell.json``: the reason); it stops the command, or with ``keep_going`` the others go on and a
    :class:`CellsFailedError` names it at the end."""
    found = prepare(spec, runs, select, seeds, overrides, weights, force, lease)
    return finish(run_pass(spec, found, keep_last=keep_last, lease=lease, keep_going=keep_going))


def finish(outcome: Outcome) -> list[Cell]:
    """The cells run, once every cell ended: a :class:`CellsFailedError` if some failed, a
    :class:`CellsInUseError` if some were skipped because another command holds them."""
    if outcome.failed:
        raise CellsFailedError(outcome)
    if outcome.skipped:
        raise CellsInUseError(outcome.ran, outcome.skipped)
    return outcome.ran


def prepare(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
            overrides: Sequence[str] = (), weights: Mapping[str, str] | None = None, force: bool = False,
            lease: float = DEFAULT_LEASE) -> list[Cell]:
    """The selected cells in the order they run, checked before anything runs (the weights map; cells run under
    other settings, unless ``force``; the sources of evaluating cells). With ``force`` they are cleared first, so
    that whichever process takes a cell next runs it from scratch, once."""
    ids = Identities()
    check_weights_map(spec, runs, weights or {})
    found = run_order(list(cells(spec, runs, select, seeds, overrides, weights)))
    if force:
        clear_cells(found, lease)
    elif stale := stale_cells(found, ids):
        refuse_stale(stale, runs)
    _check_sources(spec, found, ids)
    return found


def clear_cells(found: Sequence[Cell], lease: float = DEFAULT_LEASE) -> None:
    """Remove what earlier runs left in the cells' folders (results, checkpoints, metrics, record), each under its
    claim; a cell another command holds is left (it is skipped when it comes to run)."""
    from ..training.run_folder import prepare_run_folder

    for cell in found:
        if not cell.folder.exists():
            continue
        try:
            with claim(cell, lease):
                prepare_run_folder(cell.folder, resume=False, force=True)
                (cell.folder / RECORD).unlink(missing_ok=True)
        except RunFolderInUseError as err:
            if err.folder != cell.folder:
                raise


def run_pass(spec: dict[str, Any], found: Sequence[Cell], *, keep_last: bool = False,
             lease: float = DEFAULT_LEASE, keep_going: bool = False, poll: float = POLL_SECONDS,
             log_file: str = "", progress: Callable[[Outcome], None] | None = None) -> Outcome:
    """One pass over ``found`` (in :func:`~.grid.run_order`, as :func:`prepare` gives them): each cell is claimed
    and run, or left (done, or claimed by another process: skipped). A cell reading the output of a cell another
    process is running (the model it evaluates, the checkpoint it starts from) waits for it, looking every ``poll``
    seconds; if that process is gone before the cell is done, the cell is taken over and run here first. A failing
    cell is recorded as failed (with ``log_file``, where its traceback is) and stops the pass, or with
    ``keep_going`` is counted and the pass goes on. ``progress`` is given the outcome so far after each cell (a
    worker's report, read even when the worker dies)."""
    ids, outcome = Identities(), Outcome()
    by_folder = {c.folder: c for c in found}
    pending, told = list(found), set()
    while pending:
        for cell in list(pending):
            busy = _busy_upstream(cell)
            if busy:
                if cell.name not in told:
                    logger.info(f"{cell.name}: waiting for {busy}")
                    told.add(cell.name)
                continue
            pending.remove(cell)
            for folder in cell.upstream:  # skipped while another process held it, which is gone: run it here
                if folder in by_folder and not _settled(folder) and any(c.folder == folder for c, _ in outcome.skipped):
                    outcome.skipped = [(c, why) for c, why in outcome.skipped if c.folder != folder]
                    _take(spec, by_folder[folder], ids, outcome, keep_last, lease, keep_going, log_file)
                    if progress is not None:
                        progress(outcome)
            _take(spec, cell, ids, outcome, keep_last, lease, keep_going, log_file)
            if progress is not None:
                progress(outcome)
        if pending:
            time.sleep(poll)
    return outcome


def _busy_upstream(cell: Cell) -> str:
    """``CELL (held by WHO)`` for a cell whose output ``cell`` reads while a live process runs it ("" if none)."""
    for folder in cell.upstream:
        if not _settled(folder) and (holder := live_holder(folder)) is not None:
            return f"{'/'.join(folder.parts[-3:])} ({holder_text(holder)})"
    return ""


def _settled(folder: Path) -> bool:
    """Whether the cell in ``folder`` has ended (done, not run, or failed)."""
    return (read_record(folder) or {}).get("status") in ("done", "not_run", "failed")


def _take(spec: dict[str, Any], cell: Cell, ids: Identities, outcome: Outcome, keep_last: bool, lease: float,
          keep_going: bool, log_file: str) -> None:
    """Claim and run one cell, adding what happened to ``outcome``."""
    settings = cell_settings(cell, ids)  # now: an earlier cell may have made the file this one starts from
    if cell.source is None and finished(cell, settings_key(settings), None):
        logger.info(f"{cell.name}: done ({cell.folder / 'results.json'})")
        return
    try:
        with claim(cell, lease):
            if _run_cell(spec, cell, settings, ids, keep_last, log_file):
                outcome.ran.append(cell)
    except RunFolderInUseError as err:
        if err.folder != cell.folder:  # a folder the cell reads, not the cell's own
            raise
        holder = err.holder.describe() if err.holder.readable else f"a lock that cannot be read ({err})"
        logger.warning(f"{cell.name}: held by {holder}; skipped")
        outcome.skipped.append((cell, f"held by {holder}"))
    except Exception as err:  # noqa: BLE001 - recorded (by _run_cell), counted, then raised unless keep_going
        outcome.failed.append((cell, failure_reason(err)))
        if not keep_going:
            raise
        logger.error(f"{cell.name}: failed: {failure_reason(err)}")


def _source_state(cell: Cell, ids: Identities) -> tuple[str, str]:
    """(state, why) of the cell an evaluating cell reads: ``done`` (finished under its current settings, its best
    checkpoint there), ``not_run`` (recorded as not run: why), or ``missing`` (not run yet, running, failed, or run
    under other settings)."""
    source = cell.source
    record = read_record(source.folder) or {}
    if record.get("status") == "not_run":
        return "not_run", record.get("reason", "not run")
    if record.get("status") != "done" or not (source.folder / "results.json").is_file():
        return "missing", "not run yet" if not record else f"its status is {record.get('status')!r}"
    if record.get("key") != settings_key(cell_settings(source, ids)):
        return "missing", "it was run under other settings than the spec's now"
    if not cell.source_model.is_file():
        return "missing", f"its checkpoint {cell.source_model} is gone"
    return "done", ""


def _check_sources(spec: dict[str, Any], found: Sequence[Cell], ids: Identities) -> None:
    """Every evaluating cell's source is done, is run in this invocation (before it) or is running elsewhere (it is
    waited for); otherwise nothing runs."""
    to_run = {c.folder for c in found if c.source is None}
    for cell in found:
        if cell.source is None or cell.source.folder in to_run or live_holder(cell.source.folder) is not None:
            continue
        state, why = _source_state(cell, ids)
        if state == "missing":
            raise RunFolderError(
                f"{spec['name']}/{cell.name} evaluates the model of {spec['name']}/{cell.source.name}, which is not "
                f"done ({why}): run `ivit reproduce {spec['name']}/{cell.source.column}` first (or select both)")


class CellsInUseError(RunFolderError):
    """Cells skipped because another command holds their folders; the others ran (``done``)."""

    def __init__(self, done: list[Cell], skipped: list[tuple[Cell, str]]):
        self.done, self.skipped = done, skipped
        first, why = skipped[0]
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        super().__init__(f"ran {len(done)} cell(s); skipped {len(skipped)} in use by another command: {first.name}, "
                         f"{why}{more}. Run the same command again once they finish, to do what is left")


class CellsFailedError(RunFolderError):
    """Cells that failed while the others went on (``ivit reproduce --workers``, ``--launcher slurm``)."""

    def __init__(self, outcome: Outcome):
        self.outcome = outcome
        first, why = outcome.failed[0]
        more = f" and {len(outcome.failed) - 1} more" if len(outcome.failed) > 1 else ""
        skipped = f"; skipped {len(outcome.skipped)} in use by another command" if outcome.skipped else ""
        super().__init__(f"ran {len(outcome.ran)} cell(s){skipped}; {len(outcome.failed)} failed: {first.name} "
                         f"({why}){more}. The reasons are in --status; run the same command again to retry them")


def failure_reason(err: BaseException) -> str:
    """One line saying why a cell failed: a user error's message, else the exception's type and first line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = text if isinstance(err, UserError) else f"{type(err).__name__}: {text}" if text else type(err).__name__
    return line[:300]


def _run_cell(spec: dict[str, Any], cell: Cell, settings: dict[str, Any], ids: Identities, keep_last: bool,
              log_file: str = "") -> bool:
    """Run one cell with ``settings`` (:func:`cell_settings`) whose claim the caller holds (done cells are left,
    cells that cannot run recorded as not run, a failure recorded as failed and raised); returns whether it ran."""
    from ..errors import WeightsUnavailableError
    from ..artifacts.new_classes import FixedClassesError

    key = settings_key(settings)
    record = read_record(cell.folder) or {}
    base_record = {"key": key, "settings": settings, "spec_changes": spec_changes(cell, ids), "cell": cell.name}
    if cell.source is not None:
        state, why = _source_state(cell, ids)
        if state != "done":
            reason = f"its source {cell.source.name} was not run: {why}" if state == "not_run" else \
                f"its source {cell.source.name} is not done: {why}"
            logger.warning(f"{cell.name}: not run: {reason}")
            _record(cell, {**base_record, "status": "not_run", "reason": reason})
            return False
        base_record["source_checkpoint"] = ids.file(str(cell.source_model))
    if finished(cell, key, base_record.get("source_checkpoint")):
        logger.info(f"{cell.name}: done ({cell.folder / 'results.json'})")
        return False
    if record.get("key") != key and has_run(cell.folder):
        refuse_stale([(cell, settings_diff(record.get("settings", {}), settings))], cell.runs)
    logger.info(f"== {spec['name']}/{cell.name} ==")
    (cell.folder / "results.json").unlink(missing_ok=True)  # whatever happens next, no earlier result stands
    base_record["started"] = datetime.now().astimezone().isoformat(timespec="milliseconds")
    _record(cell, {**base_record, "status": "running"})
    try:
        _compute(spec, cell)
    except FixedClassesError:  # a plain model's cell in a transfer column: said so, not a number
        reason = "a plain model (no prompts, a head fixed to its training classes) cannot read new class names"
        logger.warning(f"{cell.name}: not run: {reason}")
        _record(cell, {**base_record, "status": "not_run", "reason": reason})
        return False
    except WeightsUnavailableError as err:
        backbone = cell.config.model.backbone
        reason = f"no weights for {backbone}" if cell.needs_backbone and backbone in str(err) else \
            f"no weights for the encoder {cell.config.prompts.encoder}"
        logger.warning(f"{cell.name}: not run: {reason} ({err})")
        _record(cell, {**base_record, "status": "not_run", "reason": reason})
        return False
    except Exception as err:
        _record(cell, {**base_record, "status": "failed", "reason": failure_reason(err), "log": log_file})
        raise
    if not keep_last:
        (cell.folder / "checkpoints" / "last.safetensors").unlink(missing_ok=True)
    _record(cell, {**base_record, "status": "done"})
    return True


def _compute(spec: dict[str, Any], cell: Cell) -> None:
    """What the cell computes: zero-shot, the transfer of its source's model, or a training run (resumed from its
    last checkpoint when there is one)."""
    from ..evaluation.transfer_protocols import transfer, zero_shot
    from ..training.loop import train

    if cell.zero_shot:
        zero_shot(cell.config, cell.folder)
    elif cell.source is not None:
        source_results = json.loads((cell.source.folder / "results.json").read_text(encoding="utf-8"))
        transfer(cell.config, cell.source_model, cell.folder, {
            "cell": f"{spec['name']}/{cell.source.name}", "dataset": cell.source.config.data.dataset,
            "top1": source_results.get("top1")})
    else:
        resume = (cell.folder / "checkpoints" / "last.safetensors").is_file()
        train(cell.config, cell.folder, resume=resume, force=not resume)


def log_to(stream: TextIO, fmt: str) -> None:
    """The library's log lines to ``stream``, one per line in ``fmt`` (a worker's or a job's process, where no
    command line sets up the console)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    library = logging.getLogger("instruction_vit")
    library.handlers[:] = [handler]
    library.setLevel(logging.INFO)
    library.propagate = False


def _record(cell: Cell, record: dict[str, Any]) -> None:
    """Write the cell's record from the main process only (rank 0 of a DDP run)."""
    if os.environ.get("RANK", "0") == "0":
        write_record(cell.folder, record)
