"""Local workers: ``ivit reproduce SPEC --workers N [--devices 0,1]`` runs the grid in N processes on this machine.

Each worker makes the same pass over the selected cells as a single process would (:func:`.runner.run_pass`),
taking cells through their claims (:mod:`.claims`), so each cell is trained by one worker. A worker is pinned to
one device of ``devices`` (``CUDA_VISIBLE_DEVICES``; several workers may share one) and to its own share of the
cores: ``cores // N`` of them (CPU affinity and torch's thread count), so the workers do not oversubscribe the
machine; a cell whose ``data.num_workers`` is null gets loader workers for that share (``min(8, share)``, as a
machine of that size would). A failed cell is recorded and reported, and the other cells go on. A worker that
dies (killed) leaves its claim; the cells left are taken up by a new round of workers, which take the claim over
and resume the cell from its last checkpoint. A cell whose worker died :data:`KILLS_TO_FAIL` times (out of memory,
say) is recorded as failed and left out of later rounds. With ``--devices`` inside an allocation that set
``CUDA_VISIBLE_DEVICES`` (Slurm), the numbers index that list. Ctrl-C stops every worker (status 130) and no new
round starts: the cells left running resume on the next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..training.run_lock import RunLock
from .cell_record import read_record, write_record
from .claims import DEFAULT_LEASE, live_holder
from .grid import Cell, cells, run_order
from .runner import POLL_SECONDS, Outcome, log_to, prepare, run_pass

logger = logging.getLogger(__name__)
#: A cell is recorded as failed when this many of its workers died while running it (the first may be a kill from
#: outside: the cell resumes from its last checkpoint in the next round).
KILLS_TO_FAIL = 2
#: The exit status of a worker stopped by Ctrl-C.
INTERRUPTED = 130


@dataclass(frozen=True)
class WorkerPlan:
    """Where one worker runs: its number, the device it sees (``CUDA_VISIBLE_DEVICES``) and its cores."""

    index: int
    device: str | None
    cores: tuple[int, ...]

    @property
    def environment(self) -> dict[str, str]:
        """The variables the worker starts with: its device, and thread counts for its cores."""
        env = {"OMP_NUM_THREADS": str(len(self.cores)), "MKL_NUM_THREADS": str(len(self.cores))}
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device
        return env


def worker_plans(workers: int, devices: Sequence[str] | None = None,
                 cores: Sequence[int] | None = None) -> list[WorkerPlan]:
    """``workers`` plans: worker k gets ``devices[k % len(devices)]`` (as :func:`visible_devices` names it; none:
    the devices this process sees) and the k-th of ``workers`` equal shares of ``cores`` (this process's cores by
    default; a share has at least one core)."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if devices is not None and (not devices or any(not d.strip() for d in devices)):
        raise ConfigError("--devices takes comma-separated device numbers, e.g. --devices 0,1,2,3")
    devices = visible_devices(devices) if devices else None
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    share = max(1, len(cores) // workers)
    plans = []
    for k in range(workers):
        start = (k * share) % len(cores)
        mine = tuple(cores[start:start + share]) or tuple(cores[:share])
        plans.append(WorkerPlan(k + 1, devices[k % len(devices)] if devices else None, mine))
    return plans


def visible_devices(devices: Sequence[str], visible: str | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` values of ``--devices``: the numbers themselves, or when this process sees only
    some devices (``visible``, this process's ``CUDA_VISIBLE_DEVICES`` by default; a Slurm allocation sets it) the
    entries of that list they index: under ``2,3``, ``--devices 0,1`` is ``2`` and ``3``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    names = [d.strip() for d in devices]
    if visible is None:
        return names
    seen = [v.strip() for v in visible.split(",") if v.strip()]
    for name in names:
        if not name.isdigit() or int(name) >= len(seen):
            raise ConfigError(f"--devices {','.join(names)}: {name} is not a device here: this process sees "
                              f"{len(seen)} device(s) (CUDA_VISIBLE_DEVICES={visible!r}); --devices numbers them "
                              "from 0")
    return [seen[int(name)] for name in names]


def run_workers(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
                overrides: Sequence[str] = (), weights: Mapping[str, str] | None = None, *, workers: int = 2,
                devices: Sequence[str] | None = None, force: bool = False, keep_last: bool = False,
                lease: float = DEFAULT_LEASE, poll: float = POLL_SECONDS) -> Outcome:
    """Run the selected cells in ``workers`` processes (see the module's doc); returns what they did together.

    The checks of a single run come first, here, once (and ``force`` clears the cells once). A worker that dies
    is reported, and the cell it held counted (failed at :data:`KILLS_TO_FAIL`); while cells are left to run and
    workers died, a new round starts (at most ``workers`` rounds in which no cell was found held by a dead worker).
    Ctrl-C, or workers stopped by it, raise :class:`KeyboardInterrupt` once the workers ended."""
    found = prepare(spec, runs, select, seeds, overrides, weights, force, lease)
    job = {"spec": spec, "runs": str(runs), "select": select, "seeds": list(seeds) if seeds else None,
           "overrides": list(overrides), "weights": dict(weights or {}), "keep_last": keep_last, "lease": lease,
           "poll": poll, "leave": []}
    plans = worker_plans(workers, devices)
    shared = None if devices else _shared_devices(found)
    reports: list[dict[str, Any]] = []
    kills: dict[str, int] = {}
    killed: dict[str, str] = {}  # cell name: why it was recorded as failed
    round_, blind = 1, 0
    while True:
        died = _round(plans, job, reports, shared)
        blind += not _count_kills(found, died, kills, killed)
        job["leave"] = sorted(killed)
        left = [c for c in found if c.name not in killed and live_holder(c.folder) is None and
                (read_record(c.folder) or {}).get("status") not in ("done", "not_run", "failed")]
        if not died or not left:
            break
        if blind >= workers:
            logger.error(f"workers died in {blind} round(s) holding no cell; {len(left)} cell(s) left for the next run")
            killed.update({c.name: "not run: the workers kept dying" for c in left})
            break
        round_ += 1
        logger.warning(f"{len(died)} worker(s) died ({'; '.join(d.text for d in died)}); {len(left)} cell(s) left: "
                       f"starting the workers again (round {round_})")
    return _merge(found, reports, killed)


@dataclass(frozen=True)
class Death:
    """A worker that died: its pid and how it ended (``signal 9``, ``exit 1``)."""

    index: int
    pid: int
    how: str

    @property
    def text(self) -> str:
        return f"worker {self.index} (pid {self.pid}) ended by {self.how}"


def _round(plans: Sequence[WorkerPlan], job: dict[str, Any], reports: list[dict[str, Any]],
           shared: str | None = None) -> list[Death]:
    """Start one worker per plan, wait for them all, add their reports (what a dead one did before it died);
    returns the dead ones. Ctrl-C, or a worker stopped by it, ends the command: :class:`KeyboardInterrupt`."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its device and threads set from the start
    with tempfile.TemporaryDirectory(prefix="ivit-workers-") as folder:
        processes = []
        for plan in plans:
            report = Path(folder) / f"worker{plan.index}.json"
            process = context.Process(target=_worker, args=(plan, job, str(report)), name=f"ivit worker {plan.index}")
            with _environment(plan.environment):
                process.start()
            logger.info(f"worker {plan.index}: pid {process.pid}, "
                        f"{'GPU ' + plan.device if plan.device else shared or 'CPU'}, cores {_ranges(plan.cores)}")
            processes.append((plan, process, report))
        try:
            for _, process, _ in processes:
                process.join()
        except KeyboardInterrupt:  # the workers got the Ctrl-C too: they release their claims and end
            for _, process, _ in processes:
                process.join(timeout=30)
            _interrupted()
        died = []
        for plan, process, report in processes:
            if report.is_file():
                reports.append(json.loads(report.read_text(encoding="utf-8")))
            if process.exitcode == INTERRUPTED:
                _interrupted()
            if process.exitcode != 0:
                code = process.exitcode or 0
                died.append(Death(plan.index, process.pid or 0, f"signal {-code}" if code < 0 else f"exit {code}"))
                logger.error(died[-1].text)
    return died


def _interrupted() -> None:
    """Stop the command after Ctrl-C, saying what becomes of the cells the workers were running."""
    logger.warning("interrupted: the cells the workers were running resume on the next run")
    raise KeyboardInterrupt


def _count_kills(found: Sequence[Cell], died: Sequence[Death], kills: dict[str, int],
                 killed: dict[str, str]) -> bool:
    """Count a kill for each cell a dead worker held (its claim names the worker's pid), and record a cell with
    :data:`KILLS_TO_FAIL` kills as failed (in ``killed`` and its ``cell.json``); returns whether any was found."""
    held = False
    for death in died:
        for cell in found:
            holder = RunLock(cell.folder).holder()
            if holder is None or not holder.readable or holder.pid != death.pid or live_holder(cell.folder):
                continue
            held = True
            kills[cell.name] = kills.get(cell.name, 0) + 1
            if kills[cell.name] >= KILLS_TO_FAIL:
                reason = f"worker killed by {death.how}, running this cell in {kills[cell.name]} rounds of workers"
                write_record(cell.folder, {**(read_record(cell.folder) or {}), "status": "failed", "reason": reason,
                                           "log": ""})
                killed[cell.name] = reason
                logger.error(f"{cell.name}: failed: {reason}; left out of the next rounds")
    return held


def _shared_devices(found: Sequence[Cell]) -> str:
    """What workers without ``--devices`` share: the CPU when every cell trains on it or no GPU is seen, else the
    GPUs this process sees (``train.device`` auto or cuda)."""
    import torch

    if all(c.config.train.device == "cpu" for c in found) or not torch.cuda.is_available():
        return "CPU"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"sharing the visible GPUs{f' ({visible})' if visible else ''}"


def _worker(plan: WorkerPlan, job: dict[str, Any], report: str) -> None:
    """One worker process: its cores and threads, its log lines prefixed, one pass over the cells (less those in
    ``job["leave"]``); its report (the names of the cells it ran, skipped and failed) written to ``report`` after
    each cell. Ctrl-C ends it quietly with status :data:`INTERRUPTED`."""
    try:
        import torch

        log_to(sys.stdout, f"[worker {plan.index}] %(message)s")
        os.sched_setaffinity(0, plan.cores)
        torch.set_num_threads(len(plan.cores))
        found = run_order([c for c in cells(job["spec"], Path(job["runs"]), job["select"], job["seeds"],
                                            job["overrides"], job["weights"]) if c.name not in job["leave"]])
        _report(Outcome(), report)
        run_pass(job["spec"], found, keep_last=job["keep_last"], lease=job["lease"], keep_going=True,
                 poll=job["poll"], progress=lambda outcome: _report(outcome, report))
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


def _report(outcome: Outcome, path: str) -> None:
    """Write a worker's outcome so far to ``path`` (whole: written aside, then moved in place)."""
    aside = f"{path}.part"
    Path(aside).write_text(json.dumps({
        "ran": [c.name for c in outcome.ran], "skipped": [[c.name, why] for c, why in outcome.skipped],
        "failed": [[c.name, why] for c, why in outcome.failed]}), encoding="utf-8")
    os.replace(aside, path)


def _merge(found: Sequence[Cell], reports: Sequence[dict[str, Any]], killed: Mapping[str, str]) -> Outcome:
    """The workers' reports as one outcome: a cell skipped by one worker because another ran it is not skipped,
    a cell that failed in one round and ran in a later one did not fail; ``killed`` cells failed."""
    by_name = {c.name: c for c in found}
    ran = list(dict.fromkeys(name for r in reports for name in r["ran"]))
    done = set(ran) | {c.name for c in found if (read_record(c.folder) or {}).get("status") == "done"}
    failed = {name: why for r in reports for name, why in r["failed"] if name not in done}
    failed.update({name: why for name, why in killed.items() if name not in done})
    skipped = {name: why for r in reports for name, why in r["skipped"] if name not in done and name not in failed}
    return Outcome([by_name[n] for n in ran], [(by_name[n], w) for n, w in skipped.items()],
                   [(by_name[n], w) for n, w in failed.items()])


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block (a spawned worker starts with the parent's environment)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ranges(cores: Sequence[int]) -> str:
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])
