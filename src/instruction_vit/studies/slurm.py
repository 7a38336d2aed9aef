"""Slurm through submitit: ``ivit reproduce SPEC --launcher slurm [--partition P] [--gpus-per-cell G] ...``.

The selected cells that are left to run are submitted as a job array (``submitit``; its scripts, pickles and logs
in ``RUNS/SPEC/.slurm/``, and which job runs which cell in ``RUNS/SPEC/.slurm/jobs.json``). Each job runs one cell
with the same function as the local path (:func:`.runner.run_pass`), through the cell's claim: a cell another
process runs is left to it. A job that reaches its time limit or is preempted is requeued by submitit
(``Checkpointable.checkpoint``: Slurm's ``USR2`` before the limit) and resumes from the cell's
``last.safetensors``, ending with the weights an uninterrupted run has. Cells that evaluate other cells' models
(``evaluate`` columns) go in a second array that starts after the first has ended (``afterany``), never before.

With ``G > 1`` GPUs per cell a job runs G tasks (``srun``), one per GPU, and the cell trains with DDP across them
(submitit's distributed environment gives each task its rank; the training loop's torchrun path does the rest).
CPU threads follow the job's ``--cpus-per-task``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError
from ..files import write_text
from .claims import DEFAULT_LEASE
from .grid import Cell, cells, run_order
from .runner import Outcome, log_to, run_pass
from .states import DONE, FAILED, QUEUED, RUNNING, TO_RUN, CellState, Job, states_of, summary

logger = logging.getLogger(__name__)
#: How many times a cell's job is requeued after reaching its time limit (preemptions do not count).
MAX_REQUEUES = 5
#: Seconds between looks at the jobs while waiting for them: the first, and the longest (the wait doubles while
#: nothing changes).
WATCH_SECONDS = (2.0, 30.0)
JOBS_FILE = "jobs.json"


class SlurmUnavailableError(UserError):
    """submitit is not installed, or this machine has no Slurm commands."""


class WaitTimeoutError(UserError):
    """:func:`watch` stopped waiting (the jobs go on)."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each cell's job asks Slurm for (``ivit reproduce --launcher slurm`` options)."""

    partition: str | None = None
    gpus_per_cell: int = 0
    cpus_per_cell: int | None = None  # the cell's CPUs in all (shared by its tasks)
    mem_per_cell: str | None = None  # Slurm's --mem: 32G, 64000 (MB)
    time: int = 24 * 60  # minutes; a cell that needs longer is requeued and resumes
    max_parallel: int | None = None  # cells running at once (the array's %K)
    account: str | None = None
    qos: str | None = None
    extra: tuple[tuple[str, str | bool], ...] = ()  # --slurm-arg KEY=VALUE: any other sbatch option
    tasks_per_cell: int | None = None  # processes per cell; default one per GPU (at least one)

    def __post_init__(self) -> None:
        if self.gpus_per_cell < 0 or (self.cpus_per_cell is not None and self.cpus_per_cell < 1) or self.time < 1:
            raise ConfigError("--gpus-per-cell must be >= 0, --cpus-per-cell and --time >= 1")
        if self.mem_per_cell is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem_per_cell.upper()):
            raise ConfigError(f"--mem-per-cell takes Slurm's --mem form (32G, 64000 for MB), not "
                              f"{self.mem_per_cell!r}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ConfigError("--max-parallel must be at least 1")

    @property
    def tasks(self) -> int:
        return self.tasks_per_cell or max(1, self.gpus_per_cell)

    def parameters(self, name: str) -> dict[str, Any]:
        """submitit's ``SlurmExecutor`` parameters for one cell's job."""
        params: dict[str, Any] = {"job_name": name, "time": self.time, "nodes": 1, "ntasks_per_node": self.tasks,
                                  "partition": self.partition, "account": self.account, "qos": self.qos,
                                  "mem": self.mem_per_cell, "gpus_per_node": self.gpus_per_cell or None}
        if self.cpus_per_cell is not None:
            params["cpus_per_task"] = max(1, self.cpus_per_cell // self.tasks)
        if self.max_parallel is not None:
            params["array_parallelism"] = self.max_parallel
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return {k: v for k, v in params.items() if v is not None}


def parse_slurm_args(items: Sequence[str]) -> tuple[tuple[str, str | bool], ...]:
    """``--slurm-arg KEY=VALUE`` (or a bare ``KEY`` for a flag) as sbatch options: ``mail-type=END``,
    ``constraint=a100``, ``exclusive``."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", key):
            raise ConfigError(f"--slurm-arg takes KEY=VALUE with an sbatch option's name (mail-type=END), not "
                              f"{item!r}")
        parsed.append((key, value if sep else True))
    return tuple(parsed)


@dataclass
class Submission:
    """The jobs submitted for a grid: cell name -> job id, and the log files."""

    jobs: dict[str, Job] = field(default_factory=dict)
    left: list[CellState] = field(default_factory=list)  # selected cells not submitted, and why

    @property
    def job_ids(self) -> list[str]:
        return sorted({j.job_id.split("_")[0] for j in self.jobs.values()}, key=int)


class CellJob:
    """One cell's Slurm job: callable with the cell's name (what submitit pickles and runs on the node), and
    checkpointable: on a time limit or a preemption submitit calls :meth:`checkpoint` and requeues the job, which
    then resumes the cell from its last checkpoint."""

    def __init__(self, spec: dict[str, Any], runs: Path, overrides: Sequence[str], weights: Mapping[str, str],
                 keep_last: bool, lease: float):
        self.spec, self.runs, self.overrides = spec, Path(runs).resolve(), list(overrides)
        self.weights, self.keep_last, self.lease = dict(weights), keep_last, lease

    def __call__(self, name: str) -> str:
        from submitit import JobEnvironment

        env = JobEnvironment()
        log_to(sys.stderr, "%(asctime)s %(message)s")
        _threads_from_slurm()
        if env.num_tasks > 1:
            _export_torch_distributed()
        column_row, _, seed = name.rpartition("/seed")
        found = list(cells(self.spec, self.runs, column_row, [int(seed)], self.overrides, self.weights))
        logger.info(f"{self.spec['name']}/{name}: Slurm job {env.job_id} on {env.hostname} "
                    f"(restart {os.environ.get('SLURM_RESTART_COUNT', '0')})")
        outcome = run_pass(self.spec, found, keep_last=self.keep_last, lease=self.lease,
                           log_file=str(env.paths.stderr))
        if outcome.skipped:
            return f"skipped: {outcome.skipped[0][1]}"
        return "ran" if outcome.ran else "done"

    def checkpoint(self, name: str) -> Any:
        """Requeue the same cell: it resumes from ``last.safetensors`` (written at the end of every epoch)."""
        from submitit.helpers import DelayedSubmission

        logger.info(f"{name}: requeued; it resumes from its last checkpoint")
        return DelayedSubmission(self, name)


def submit(spec: dict[str, Any], runs: Path, found: Sequence[Cell], options: SlurmOptions, *,
           overrides: Sequence[str] = (), weights: Mapping[str, str] | None = None, keep_last: bool = False,
           lease: float = DEFAULT_LEASE) -> Submission:
    """Submit the cells of ``found`` that are left to run (:func:`to_submit`) as job arrays: the cells that read no
    other submitted cell's output first, then each cell reading one (the model it evaluates, the checkpoint it
    starts from) in an array that starts once the arrays before it have ended (``afterany``). Returns the jobs by
    cell (also written to ``RUNS/SPEC/.slurm/jobs.json``)."""
    executor = _executor(spec, runs, options)
    submission = Submission()
    chosen, submission.left = to_submit(spec, runs, found)
    job = CellJob(spec, runs, overrides, weights or {}, keep_last, lease)
    before: list[str] = []
    for level in _levels(chosen):
        if before:
            executor.update_parameters(dependency="afterany:" + ":".join(before))
        before += _submit_array(executor, job, level, submission)
    _save_jobs(spec, runs, submission.jobs)
    return submission


def _levels(chosen: Sequence[Cell]) -> list[list[Cell]]:
    """``chosen`` in groups, each reading only cells of the groups before it (:func:`~.grid.run_order`)."""
    ordered, groups, placed = run_order(chosen), [], {}
    for cell in ordered:
        level = 1 + max((placed[f] for f in cell.upstream if f in placed), default=-1)
        placed[cell.folder] = level
        if level == len(groups):
            groups.append([])
        groups[level].append(cell)
    return groups


def to_submit(spec: dict[str, Any], runs: Path, found: Sequence[Cell]) -> tuple[list[Cell], list[CellState]]:
    """The cells to submit (to run, or failed last time) and the others with their state (done, running elsewhere,
    queued already, cannot run)."""
    by_name = {s.cell.name: s for s in states_of(found, job_states(spec, runs))}
    chosen = [c for c in found if by_name[c.name].state in (TO_RUN, FAILED)]
    return chosen, [by_name[c.name] for c in found if by_name[c.name].state not in (TO_RUN, FAILED)]


def preview(spec: dict[str, Any], runs: Path, found: Sequence[Cell], options: SlurmOptions) -> list[str]:
    """What :func:`submit` would send for ``found``: each array's cells and its ``#SBATCH`` lines."""
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit writes; no cluster needed

    chosen, _ = to_submit(spec, runs, found)
    lines = [f"would submit {len(chosen)} cell(s)"]
    for i, level in enumerate(_levels(chosen)):
        params = options.parameters(_job_name(spec))
        if i:
            params["dependency"] = "afterany:" + ":".join(f"<array {k + 1}>" for k in range(i))
        shown = ", ".join(c.name for c in level[:4]) + (f", ... ({len(level)})" if len(level) > 4 else "")
        lines.append(f"array {i + 1}: {shown}")
        script = _make_sbatch_string(command="python -u -m submitit.core._submit ...", folder=_folder(spec, runs),
                                     map_count=len(level) if len(level) > 1 else None, **params)
        lines += [f"  {line}" for line in script.splitlines() if line.startswith("#SBATCH")]
    return lines


def job_states(spec: dict[str, Any], runs: Path) -> dict[str, Job]:
    """The jobs recorded for the grid's cells with their state now (``squeue``: queued or running; gone from the
    queue: ended; no ``squeue`` here: unknown)."""
    recorded = _load_jobs(spec, runs)
    if not recorded:
        return {}
    queue = _squeue()
    out = {}
    for name, entry in recorded.items():
        state = "unknown" if queue is None else queue.get(entry["job_id"], "ended")
        out[name] = Job(entry["job_id"], state, entry.get("log", ""))
    return out


def watch(spec: dict[str, Any], runs: Path, submitted: Sequence[Cell],
          every: tuple[float, float] = WATCH_SECONDS, show: Callable[[list[CellState]], None] | None = None,
          timeout: float | None = None) -> Outcome:
    """Wait until the ``submitted`` cells' jobs have all left the queue, logging each cell's change of state (and
    calling ``show`` with the states each time); returns what they did. Ctrl-C stops the waiting, not the jobs; so
    does ``timeout`` (seconds), with a :class:`WaitTimeoutError`."""
    seen: dict[str, str] = {}
    pause, deadline = every[0], None if timeout is None else time.time() + timeout
    while True:
        changed = False
        jobs = job_states(spec, runs)
        states = states_of(submitted, jobs)
        for s in states:
            line = f"{s.state}: {s.detail}" if s.detail else s.state
            if seen.get(s.cell.name) != line:
                seen[s.cell.name], changed = line, True
                logger.info(f"{s.cell.name}: {line}")
        if show is not None:
            show(states)
        if not any(s.state in (RUNNING, QUEUED) for s in states) and \
                all(jobs.get(c.name, Job("", "ended")).state in ("ended", "unknown") for c in submitted):
            break
        if deadline is not None and time.time() > deadline:
            raise WaitTimeoutError(f"stopped waiting after {timeout:g} s: {summary(states)}; the jobs keep running")
        pause = every[0] if changed else min(every[1], 2 * pause)
        time.sleep(pause)
    logger.info(summary(states))
    return Outcome([s.cell for s in states if s.state == DONE], [],
                   [(s.cell, s.detail) for s in states if s.state == FAILED])


def watch_hint(spec_name: str, runs: Path, submission: Submission) -> str:
    """How to watch the jobs after Ctrl-C."""
    ids = ",".join(submission.job_ids)
    return (f"the jobs keep running: watch them with `ivit reproduce {spec_name} --status --runs {runs}` or "
            f"`squeue -j {ids}`; their logs are in {_folder_for_name(spec_name, runs)}")


# -- submitit --------------------------------------------------------------------------------------------------
def _executor(spec: dict[str, Any], runs: Path, options: SlurmOptions):
    try:
        import submitit
    except ImportError:
        raise SlurmUnavailableError("--launcher slurm needs submitit: pip install 'submitit>=1.5,<2' (the cluster "
                                    "extra; in a checkout: pip install -e '.[cluster]')") from None
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise SlurmUnavailableError("--launcher slurm needs Slurm's commands (sbatch, srun) on this machine: run it "
                                    "on the cluster's login node, or use --workers N on one machine")
    executor = submitit.SlurmExecutor(folder=_folder(spec, runs), max_num_timeout=MAX_REQUEUES)
    executor.update_parameters(**options.parameters(_job_name(spec)))
    return executor


def _submit_array(executor, job: CellJob, chosen: Sequence[Cell], submission: Submission) -> list[str]:
    """Submit ``chosen`` as one array; returns its job id (the array's) for a dependency."""
    if not chosen:
        return []
    jobs = executor.map_array(job, [c.name for c in chosen])
    for cell, submitted in zip(chosen, jobs):
        submission.jobs[cell.name] = Job(submitted.job_id, "queued", str(submitted.paths.stderr))
    logger.info(f"submitted {len(chosen)} cell(s) as Slurm job {jobs[0].job_id.split('_')[0]} "
                f"(logs in {executor.folder})")
    return sorted({j.job_id.split("_")[0] for j in jobs})


def _export_torch_distributed() -> None:
    """Rank, world size and rendezvous of this task for torch's ``env://`` start (the torchrun path)."""
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # each rank takes cuda:LOCAL_RANK


def _threads_from_slurm() -> None:
    """torch's CPU threads: the CPUs Slurm gave this task (a node's cores are shared with other jobs)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch

        torch.set_num_threads(int(cpus))


# -- the jobs file ---------------------------------------------------------------------------------------------
def _folder(spec: dict[str, Any], runs: Path) -> Path:
    return _folder_for_name(spec["name"], runs)


def _folder_for_name(name: str, runs: Path) -> Path:
    return Path(runs).resolve() / name / ".slurm"


def _job_name(spec: dict[str, Any]) -> str:
    return f"ivit-{spec['name']}"


def _load_jobs(spec: dict[str, Any], runs: Path) -> dict[str, dict[str, str]]:
    """``jobs.json``: cell name -> ``{job_id, log, submitted}`` (the latest submission of each cell)."""
    path = _folder(spec, runs) / JOBS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("job_id"), str)}


def _save_jobs(spec: dict[str, Any], runs: Path, jobs: Mapping[str, Job]) -> None:
    recorded = _load_jobs(spec, runs)
    now = datetime.now().astimezone().isoformat(timespec="milliseconds")
    recorded.update({name: {"job_id": j.job_id, "log": j.log, "submitted": now} for name, j in jobs.items()})
    folder = _folder(spec, runs)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / JOBS_FILE, json.dumps(recorded, indent=2))


def _squeue() -> dict[str, str] | None:
    """This user's jobs in the queue, one entry per array task: job id -> ``queued`` or ``running``; ``None``
    where ``squeue`` cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%T"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    out = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        out[job_id] = "running" if state in ("RUNNING", "COMPLETING") else "queued"
    return out
