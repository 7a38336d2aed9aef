"""Running a spec's cells: :func:`run_cells` takes the selected cells in order (training cells, then the cells
that evaluate them), each under its folder's lock, and records how each ended (``cell.json``)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import RunFolderError
from ..files import file_sha256
from ..training.run_lock import RunFolderInUseError
from .cell_record import finished, has_run, read_record, write_record
from .grid import Cell, cells, check_weights_map
from .keys import Identities, cell_settings, refuse_stale, settings_diff, settings_key, spec_changes, stale_cells

logger = logging.getLogger(__name__)


def _source_state(cell: Cell, ids: Identities) -> tuple[str, str]:
    """(state, why) of the cell an evaluating cell reads: ``done`` (finished under its current settings, its best
    checkpoint there), ``not_run`` (recorded as not run: why), or ``missing`` (not run yet, running, or run under
    other settings)."""
    source = cell.source
    record = read_record(source.folder) or {}
    if record.get("status") == "not_run":
        return "not_run", record.get("reason", "not run")
    if record.get("status") != "done" or not (source.folder / "results.json").is_file():
        return "missing", "not run yet" if not record else f"its status is {record.get('status')!r}"
    if record.get("key") != settings_key(cell_settings(source, ids)):
        return "missing", "it was run under other settings than the spec's now"
    if not (source.folder / "checkpoints" / "best.safetensors").is_file():
        return "missing", f"its checkpoint {source.folder / 'checkpoints' / 'best.safetensors'} is gone"
    return "done", ""


def _check_sources(spec: dict[str, Any], found: Sequence[Cell], ids: Identities) -> None:
    """Every evaluating cell's source is done or is run in this invocation (before it); otherwise nothing runs."""
    to_run = {c.folder for c in found if c.source is None}
    for cell in found:
        if cell.source is None or cell.source.folder in to_run:
            continue
        state, why = _source_state(cell, ids)
        if state == "missing":
            raise RunFolderError(
                f"{spec['name']}/{cell.name} evaluates the model of {spec['name']}/{cell.source.name}, which is not "
                f"done ({why}): run `ivit reproduce {spec['name']}/{cell.source.column}` first (or select both)")


def _source_checkpoint(cell: Cell) -> Path:
    return cell.source.folder / "checkpoints" / "best.safetensors"


def run_cells(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
              overrides: Sequence[str] = (), force: bool = False,
              weights: Mapping[str, str] | None = None, keep_last: bool = False) -> list[Cell]:
    """Run every selected cell that has no results under its current settings; returns the cells run.

    A cell is keyed by :func:`cell_settings`; a finished or interrupted cell whose key differs is refused (or, with
    ``force``, rerun from scratch). A cell whose backbone weights cannot be had is recorded as not run and the
    others go on. Finished cells keep only ``best.safetensors`` unless ``keep_last``. Evaluating cells
    (``evaluate`` columns) run after the training cells; one whose source is not done and not selected is refused
    before anything runs, one whose source was not run is recorded as not run, and one is rerun when its source's
    checkpoint changed.

    A cell's folder is a run folder: the cell holds its lock (:mod:`.run_lock`) while it is looked at and run. A
    cell held by another command (a second ``ivit reproduce`` on the same runs folder) is skipped with a line naming
    the holder, and so are the evaluating cells that read it; the others go on, then a :class:`CellsInUseError`
    (a RunFolderError; ``.done`` holds the cells run) says which were skipped."""
    ids = Identities()
    check_weights_map(spec, runs, weights or {})
    found = sorted(cells(spec, runs, select, seeds, overrides, weights), key=lambda c: c.source is not None)
    if not force and (stale := stale_cells(found, ids)):
        refuse_stale(stale, runs)
    _check_sources(spec, found, ids)
    done: list[Cell] = []
    skipped: list[tuple[Cell, str]] = []
    held: set[Path] = set()  # folders another command holds
    for cell in found:
        settings = cell_settings(cell, ids)  # again: an earlier cell may have made the file this one starts from
        key = settings_key(settings)
        if cell.source is None and not force and finished(cell, key, None):
            logger.info(f"{cell.name}: done ({cell.folder / 'results.json'})")
            continue
        if cell.source is not None and cell.source.folder in held:
            why = f"its source {cell.source.name} is in use by another command"
            logger.warning(f"{cell.name}: {why}; skipped")
            skipped.append((cell, why))
            continue
        try:
            with _cell_lock(cell):
                if _run_cell(spec, runs, cell, settings, ids, force, keep_last):
                    done.append(cell)
        except RunFolderInUseError as err:
            if err.folder != cell.folder:  # a folder the cell reads, not the cell's own
                raise
            holder = err.holder.describe() if err.holder.readable else f"a lock that cannot be read ({err})"
            logger.warning(f"{cell.name}: held by {holder}; skipped")
            skipped.append((cell, f"held by {holder}"))
            held.add(cell.folder)
    if skipped:
        raise CellsInUseError(done, skipped)
    return done


@contextlib.contextmanager
def _cell_lock(cell: Cell) -> Iterator[None]:
    """The cell's folder locked for the block (rank 0 holding it for all under torchrun, as ``train`` does)."""
    from ..training.distributed import init_world
    from ..training.loop import hold_run_folder

    world, dist_device = init_world(cell.config.train.device)  # a world of one outside torchrun
    with hold_run_folder(cell.folder, world, dist_device):
        yield


class CellsInUseError(RunFolderError):
    """Cells skipped because another command holds their folders; the others ran (``done``)."""

    def __init__(self, done: list[Cell], skipped: list[tuple[Cell, str]]):
        self.done, self.skipped = done, skipped
        first, why = skipped[0]
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        super().__init__(f"ran {len(done)} cell(s); skipped {len(skipped)} in use by another command: {first.name}, "
                         f"{why}{more}. Run the same command again once they finish, to do what is left")


def _run_cell(spec: dict[str, Any], runs: Path, cell: Cell, settings: dict[str, Any], ids: Identities, force: bool,
              keep_last: bool) -> bool:
    """Run one cell with ``settings`` (:func:`cell_settings`) whose folder's lock the caller holds (done cells are
    left, cells that cannot run recorded as not run); returns whether it ran."""
    from ..errors import WeightsUnavailableError
    from ..artifacts.new_classes import FixedClassesError
    from ..evaluation.protocols import transfer, zero_shot
    from ..training.loop import train

    key = settings_key(settings)
    record = read_record(cell.folder) or {}
    results = cell.folder / "results.json"
    base_record = {"key": key, "settings": settings, "spec_changes": spec_changes(cell, ids), "cell": cell.name}
    if cell.source is not None:
        state, why = _source_state(cell, ids)
        if state != "done":
            reason = f"its source {cell.source.name} was not run: {why}" if state == "not_run" else \
                f"its source {cell.source.name} is not done: {why}"
            logger.warning(f"{cell.name}: not run: {reason}")
            write_record(cell.folder, {**base_record, "status": "not_run", "reason": reason})
            return False
        base_record["source_checkpoint"] = f"sha256:{file_sha256(_source_checkpoint(cell))}"
    if not force and finished(cell, key, base_record.get("source_checkpoint")):
        logger.info(f"{cell.name}: done ({results})")
        return False
    if not force and record.get("key") != key and has_run(cell.folder):
        refuse_stale([(cell, settings_diff(record.get("settings", {}), settings))], runs)
    logger.info(f"== {spec['name']}/{cell.name} ==")
    resume = (cell.folder / "checkpoints" / "last.safetensors").is_file() and not force
    results.unlink(missing_ok=True)  # whatever happens next, no earlier result stands for this run
    write_record(cell.folder, {**base_record, "status": "running"})
    try:
        if cell.zero_shot:
            zero_shot(cell.config, cell.folder)
        elif cell.source is not None:
            source_results = json.loads((cell.source.folder / "results.json").read_text(encoding="utf-8"))
            transfer(cell.config, _source_checkpoint(cell), cell.folder, {
                "cell": f"{spec['name']}/{cell.source.name}", "dataset": cell.source.config.data.dataset,
                "top1": source_results.get("top1")})
        else:
            train(cell.config, cell.folder, resume=resume, force=not resume)
    except FixedClassesError:  # a plain classifier's cell in a transfer column: said so, not a number
        reason = "a plain classifier (no prompts, a head fixed to its training classes) cannot read new class names"
        logger.warning(f"{cell.name}: not run: {reason}")
        write_record(cell.folder, {**base_record, "status": "not_run", "reason": reason})
        return False
    except WeightsUnavailableError as err:
        backbone = cell.config.model.backbone
        reason = f"no weights for {backbone}" if cell.needs_backbone and backbone in str(err) else \
            f"no weights for the encoder {cell.config.prompts.encoder}"
        logger.warning(f"{cell.name}: not run: {reason} ({err})")
        write_record(cell.folder, {**base_record, "status": "not_run", "reason": reason})
        return False
    if not keep_last:
        (cell.folder / "checkpoints" / "last.safetensors").unlink(missing_ok=True)
    write_record(cell.folder, {**base_record, "status": "done"})
    return True
