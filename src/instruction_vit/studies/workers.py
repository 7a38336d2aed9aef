"""Local workers: ``ivit reproduce SPEC --workers N [--devices 0,1]`` runs the grid in N processes on this machine.

Each worker makes the same pass over the selected cells as a single process would (:func:`.runner.run_pass`),
taking cells through their claims (:mod:`.claims`), so each cell is trained by one worker. A worker is pinned to
one device of ``devices`` (``CUDA_VISIBLE_DEVICES``; several workers may share one) and to its own share of the
cores: ``cores // N`` of them (CPU affinity and torch's thread count), so the workers do not oversubscribe the
machine; a cell whose ``data.num_workers`` is null gets loader workers for that share (``min(8, share)``, as a
machine of that size would). A failed cell is recorded and reported, and the other cells go on. A worker that
dies (killed) leaves its claim; the cells left are taken up by a new round of workers, which take the claim over
and resume the cell from its last checkpoint.
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
from .cell_record import read_record
from .claims import DEFAULT_LEASE, live_holder
from .grid import Cell, cells, run_order
from .runner import POLL_SECONDS, Outcome, log_to, prepare, run_pass

logger = logging.getLogger(__name__)


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
    """``workers`` plans: worker k gets ``devices[k % len(devices)]`` (none: the CPU) and the k-th of ``workers``
    equal shares of ``cores`` (this process's cores by default; a share has at least one core)."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if devices is not None and (not devices or any(not d.strip() for d in devices)):
        raise ConfigError("--devices takes comma-separated device numbers, e.g. --devices 0,1,2,3")
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    share = max(1, len(cores) // workers)
    plans = []
    for k in range(workers):
        start = (k * share) % len(cores)
        mine = tuple(cores[start:start + share]) or tuple(cores[:share])
        plans.append(WorkerPlan(k + 1, devices[k % len(devices)].strip() if devices else None, mine))
    return plans


def run_workers(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
                overrides: Sequence[str] = (), weights: Mapping[str, str] | None = None, *, workers: int = 2,
                devices: Sequence[str] | None = None, force: bool = False, keep_last: bool = False,
                lease: float = DEFAULT_LEASE, poll: float = POLL_SECONDS) -> Outcome:
    """Run the selected cells in ``workers`` processes (see the module's doc); returns what they did together.

    The checks of a single run come first, here, once (and ``force`` clears the cells once). A worker that dies
    is reported; while cells are left to run and workers died, a new round starts (at most ``workers`` more)."""
    found = prepare(spec, runs, select, seeds, overrides, weights, force, lease)
    job = {"spec": spec, "runs": str(runs), "select": select, "seeds": list(seeds) if seeds else None,
           "overrides": list(overrides), "weights": dict(weights or {}), "keep_last": keep_last, "lease": lease,
           "poll": poll}
    plans = worker_plans(workers, devices)
    reports: list[dict[str, Any]] = []
    for round_ in range(workers + 1):
        died = _round(plans, job, reports)
        left = [c for c in found if (read_record(c.folder) or {}).get("status") not in ("done", "not_run", "failed")
                and live_holder(c.folder) is None]
        if not died or not left:
            break
        logger.warning(f"{len(died)} worker(s) died ({'; '.join(died)}); {len(left)} cell(s) left: starting the "
                       f"workers again (round {round_ + 2})")
    return _merge(found, reports)


def _round(plans: Sequence[WorkerPlan], job: dict[str, Any], reports: list[dict[str, Any]]) -> list[str]:
    """Start one worker per plan, wait for them all, add their reports; returns how the dead ones died."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its device and threads set from the start
    with tempfile.TemporaryDirectory(prefix="ivit-workers-") as folder:
        processes = []
        for plan in plans:
            report = Path(folder) / f"worker{plan.index}.json"
            process = context.Process(target=_worker, args=(plan, job, str(report)), name=f"ivit worker {plan.index}")
            with _environment(plan.environment):
                process.start()
            logger.info(f"worker {plan.index}: pid {process.pid}, "
                        f"{'device ' + plan.device if plan.device else 'CPU'}, cores {_ranges(plan.cores)}")
            processes.append((plan, process, report))
        try:
            for _, process, _ in processes:
                process.join()
        except KeyboardInterrupt:  # the workers got the Ctrl-C too: they release their claims and end
            for _, process, _ in processes:
                process.join(timeout=30)
            raise
        died = []
        for plan, process, report in processes:
            if report.is_file():
                reports.append(json.loads(report.read_text(encoding="utf-8")))
            else:
                how = f"signal {-process.exitcode}" if (process.exitcode or 0) < 0 else f"exit {process.exitcode}"
                died.append(f"worker {plan.index} (pid {process.pid}) ended by {how}")
                logger.error(died[-1])
    return died


def _worker(plan: WorkerPlan, job: dict[str, Any], report: str) -> None:
    """One worker process: its cores and threads, its log lines prefixed, one pass over the cells; its report (the
    names of the cells it ran, skipped and failed) written to ``report``."""
    import torch

    log_to(sys.stdout, f"[worker {plan.index}] %(message)s")
    os.sched_setaffinity(0, plan.cores)
    torch.set_num_threads(len(plan.cores))
    found = run_order(list(cells(job["spec"], Path(job["runs"]), job["select"], job["seeds"], job["overrides"],
                                 job["weights"])))
    outcome = run_pass(job["spec"], found, keep_last=job["keep_last"], lease=job["lease"], keep_going=True,
                       poll=job["poll"])
    Path(report).write_text(json.dumps({
        "ran": [c.name for c in outcome.ran], "skipped": [[c.name, why] for c, why in outcome.skipped],
        "failed": [[c.name, why] for c, why in outcome.failed]}), encoding="utf-8")


def _merge(found: Sequence[Cell], reports: Sequence[dict[str, Any]]) -> Outcome:
    """The workers' reports as one outcome: a cell skipped by one worker because another ran it is not skipped,
    a cell that failed in one round and ran in a later one did not fail."""
    by_name = {c.name: c for c in found}
    ran = list(dict.fromkeys(name for r in reports for name in r["ran"]))
    done = set(ran) | {c.name for c in found if (read_record(c.folder) or {}).get("status") == "done"}
    failed = {name: why for r in reports for name, why in r["failed"] if name not in done}
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
