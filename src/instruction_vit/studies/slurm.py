"""Slurm through submitit: ``ivit reproduce SPEC --launcher slurm [--partition P] [--gpus-per-cell G] ...``.

The selected cells that are left to run are submitted as a job array (``submitit``; its scripts, pickles and logs
in ``RUNS/SPEC/.slurm/``, and which job runs which cell in ``RUNS/SPEC/.slurm/jobs.json``). Each job runs one cell
with the same function as the local path (:func:`.runner.run_pass`), through the cell's claim: a cell another
process runs is left to it. A job that reaches its time limit or is preempted is requeued by submitit
(``Checkpointable.checkpoint``: Slurm's ``USR2`` before the limit) and resumes from the cell's
``last.safetensors``, ending with the weights an uninterrupted run has. Cells that evaluate other cells' models
(``evaluate`` columns) go in a second array that starts after the first has ended (``afterany``), never before;
one whose source is queued or running as an earlier submission's job starts after that job (``afterany:JOBID``).
A submission is refused (one line) when a cell it would send reads a cell that a process outside Slurm runs, or when
a cell is queued already with other settings than it has now (``scancel JOBID``, then submit again).

With ``G > 1`` GPUs per cell a job runs G tasks (``srun``), one per GPU, and the cell trains with DDP across them
(submitit's distributed environment gives each task its rank; the training loop's torchrun path does the rest).
CPU threads follow the job's ``--cpus-per-task``.
"""

from __future__ import annotations

import contextlib
import io
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
from .cell_record import read_record
from .claims import DEFAULT_LEASE, holder_text, live_holder
from .grid import Cell, cells, run_order
from .keys import Identities, cell_settings, settings_key
from .runner import Outcome, log_to, run_pass
from .states import DONE, FAILED, QUEUED, RUNNING, STALE, TO_RUN, CellState, Job, states_of, summary

logger = logging.getLogger(__name__)
#: How many times a cell's job is requeued after reaching its time limit (preemptions do not count).
MAX_REQUEUES = 5
#: Seconds between looks at the jobs while waiting for them: the first, and the longest (the wait doubles while
#: nothing changes).
WATCH_SECONDS = (2.0, 30.0)
JOBS_FILE = "jobs.json"
#: Failed looks at the queue in a row after which :func:`watch` stops waiting.
SQUEUE_TRIES = 5


class SlurmUnavailableError(UserError):
    """submitit is not installed, or this machine has no Slurm commands."""


class WaitTimeoutError(UserError):
    """:func:`watch` stopped waiting (the jobs go on)."""


class SubmitError(UserError):
    """sbatch refused a job array, or a submission would run a cell wrongly (the message says why)."""


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
    jobs = job_states(spec, runs)
    chosen, submission.left = to_submit(spec, runs, found, jobs)
    keys = _keys(chosen)
    job = CellJob(spec, runs, overrides, weights or {}, keep_last, lease)
    before: list[str] = []
    for level in _levels(chosen):
        after = before + _waits_for(spec, runs, level, jobs, {c.folder for c in chosen})
        if after:
            executor.update_parameters(dependency="afterany:" + ":".join(after))
        before += _submit_array(executor, job, level, submission)
        _save_jobs(spec, runs, {c.name: submission.jobs[c.name] for c in level}, keys)  # each array once queued
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


def to_submit(spec: dict[str, Any], runs: Path, found: Sequence[Cell], jobs: Mapping[str, Job] | None = None,
              force: bool = False) -> tuple[list[Cell], list[CellState]]:
    """The cells to submit (to run, or failed last time; with ``force`` also done and stale ones, which the command
    clears first) and the others with their state (running elsewhere, queued already, cannot run). A cell whose
    live job was submitted with other settings than it has now is refused (:class:`SubmitError`)."""
    jobs = job_states(spec, runs) if jobs is None else jobs
    _refuse_outdated_jobs(spec, runs, found, jobs)
    sent = (TO_RUN, FAILED, DONE, STALE) if force else (TO_RUN, FAILED)
    by_name = {s.cell.name: s for s in states_of(found, jobs)}
    chosen = [c for c in found if by_name[c.name].state in sent]
    return chosen, [by_name[c.name] for c in found if by_name[c.name].state not in sent]


def preview(spec: dict[str, Any], runs: Path, found: Sequence[Cell], options: SlurmOptions,
            force: bool = False) -> list[str]:
    """What :func:`submit` would send for ``found`` (``force``: as the command with ``--force``, which clears
    finished cells first): each array's cells and its ``#SBATCH`` lines."""
    _submitit()  # the same error as a submission where submitit is missing
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit writes; no cluster needed

    jobs = job_states(spec, runs)
    chosen, _ = to_submit(spec, runs, found, jobs, force)
    lines = [f"would submit {len(chosen)} cell(s)"]
    for i, level in enumerate(_levels(chosen)):
        params = options.parameters(_job_name(spec))
        after = [f"<array {k + 1}>" for k in range(i)] + _waits_for(spec, runs, level, jobs,
                                                                     {c.folder for c in chosen})
        if after:
            params["dependency"] = "afterany:" + ":".join(after)
        shown = ", ".join(c.name for c in level[:4]) + (f", ... ({len(level)})" if len(level) > 4 else "")
        lines.append(f"array {i + 1}: {shown}")
        script = _make_sbatch_string(command="python -u -m submitit.core._submit ...", folder=_folder(spec, runs),
                                     map_count=len(level) if len(level) > 1 else None, **params)
        lines += [f"  {line}" for line in script.splitlines() if line.startswith("#SBATCH")]
    return lines


def _waits_for(spec: dict[str, Any], runs: Path, level: Sequence[Cell], jobs: Mapping[str, Job],
               sent: set[Path]) -> list[str]:
    """The jobs outside this submission (whose cells' folders are ``sent``) that cells of ``level`` must start after:
    the queued or running job of each cell they read that is not sent with them. A cell they read that a process
    outside Slurm runs, or that is neither done nor sent nor running anywhere, is refused (:class:`SubmitError`):
    there is nothing to wait for, and the job would fail."""
    after: list[str] = []
    for cell in level:
        for folder in cell.upstream:
            name = _cell_name(spec, runs, folder)
            job = jobs.get(name)
            if job is not None and job.state in ("queued", "running"):
                after.append(job.job_id)
                continue
            holder = live_holder(folder)
            if holder is None:
                if folder in sent or (read_record(folder) or {}).get("status") == "done":
                    continue
                raise SubmitError(f"{cell.name} reads {name}, which is not done and not in this submission: select "
                                  f"it too (ivit reproduce {spec['name']}/{name.split('/')[0]}), or run it first")
            if holder.slurm_job_id:
                after.append(holder.slurm_job_id)
            else:
                raise SubmitError(f"{cell.name} reads {name}, which {holder_text(holder)} runs outside Slurm: "
                                  f"submit it once that has ended (or leave {cell.name} out of the selection)")
    return list(dict.fromkeys(after))


def _cell_name(spec: dict[str, Any], runs: Path, folder: Path) -> str:
    """``COLUMN/ROW/seedK`` of a cell folder of the grid (the key of ``jobs.json``)."""
    try:
        return Path(folder).resolve().relative_to(Path(runs).resolve() / spec["name"]).as_posix()
    except ValueError:
        return str(folder)


def _keys(found: Sequence[Cell]) -> dict[str, str]:
    """Each cell's settings key as a submission knows it, recorded with its job: its settings
    (:func:`~.keys.cell_settings`) less what cells it reads have not made yet. A cell starting from another cell's
    checkpoint is keyed by that cell's folder, not by the checkpoint's bytes (missing when it is submitted, there
    later), and an evaluating cell by its source's name; the job itself checks the rest when it runs."""
    ids = Identities()
    keys = {}
    for cell in found:
        settings = cell_settings(cell, ids)
        if "backbone_weights" in settings and any(f != getattr(cell.source, "folder", None) for f in cell.upstream):
            settings["backbone_weights"] = "made by " + " ".join(sorted("/".join(Path(f).parts[-4:])
                                                                        for f in cell.upstream))
        if "source" in settings:
            settings["source"] = {"cell": settings["source"]["cell"]}
        keys[cell.name] = settings_key(settings)
    return keys


def _refuse_outdated_jobs(spec: dict[str, Any], runs: Path, found: Sequence[Cell], jobs: Mapping[str, Job]) -> None:
    """A :class:`SubmitError` when a cell's queued or running job was submitted with other settings than the cell
    has now: that job would run the old ones (it is not cancelled here)."""
    recorded = _load_jobs(spec, runs)
    live = [c for c in found if c.name in jobs and jobs[c.name].state in ("queued", "running")
            and isinstance(recorded.get(c.name, {}).get("key"), str)]
    keys = _keys(live)
    for cell in live:
        if recorded[cell.name]["key"] != keys[cell.name]:
            job_id = jobs[cell.name].job_id
            raise SubmitError(f"{cell.name} is {jobs[cell.name].state} as Slurm job {job_id} with other settings "
                              f"than it has now: cancel it with `scancel {job_id}`, then submit again")


def job_states(spec: dict[str, Any], runs: Path, queue: Mapping[str, str] | None = None) -> dict[str, Job]:
    """The jobs recorded for the grid's cells with their state now (``squeue``, or ``queue`` as it gave it: queued
    or running; gone from the queue: ended; no ``squeue`` here, or it failed: unknown)."""
    recorded = _load_jobs(spec, runs)
    if not recorded:
        return {}
    queue = _squeue() if queue is None else queue
    out = {}
    for name, entry in recorded.items():
        state = "unknown" if queue is None else queue.get(entry["job_id"], "ended")
        out[name] = Job(entry["job_id"], state, entry.get("log", ""))
    return out


def watch(spec: dict[str, Any], runs: Path, submitted: Sequence[Cell],
          every: tuple[float, float] = WATCH_SECONDS, show: Callable[[list[CellState]], None] | None = None,
          timeout: float | None = None, target: str | None = None) -> Outcome:
    """Wait until the ``submitted`` cells' jobs have all left the queue, logging each cell's change of state (and
    calling ``show`` with the states each time); returns what they did. Ctrl-C stops the waiting, not the jobs; so
    does ``timeout`` (seconds), with a :class:`WaitTimeoutError`. A look at the queue that fails is tried again;
    after :data:`SQUEUE_TRIES` failures in a row it stops waiting with a :class:`WaitTimeoutError` naming the error.
    A cell that ends neither done, failed nor recorded as not run (as the local path records it) counts as failed.
    ``target``: what follows ``ivit reproduce`` in the command that submitted (its selection, seeds, overrides and
    runs folder), for the line on how to watch."""
    seen: dict[str, str] = {}
    pause, deadline, failures = every[0], None if timeout is None else time.time() + timeout, 0
    while True:
        changed = False
        queue, error = _ask_squeue()
        if queue is None:
            failures += 1
            if failures >= SQUEUE_TRIES:
                raise WaitTimeoutError(f"stopped waiting: squeue failed {failures} times in a row ({error}); the "
                                       f"jobs go on: watch them with `ivit reproduce {target or _default_target(spec, runs)} --status`")
            time.sleep(every[0])
            continue
        failures = 0
        jobs = job_states(spec, runs, queue)
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
                   [(s.cell, s.detail if s.state == FAILED else f"its job ended with it {s.state}: {s.detail}")
                    for s in states if s.state != DONE and not _not_run(s)])


def _not_run(state: CellState) -> bool:
    """Whether the cell's job recorded it as not run (its weights or its source's model missing), as locally."""
    return state.state == TO_RUN and state.detail.startswith("not run last time")


def watch_hint(spec: dict[str, Any], runs: Path, submission: Submission, target: str | None = None) -> str:
    """How to watch the jobs after Ctrl-C or ``--no-wait`` (``target``: what follows ``ivit reproduce`` in the
    command that submitted, so ``--status`` shows its cells under its settings)."""
    ids = ",".join(submission.job_ids)
    return (f"the jobs keep running: watch them with `ivit reproduce {target or _default_target(spec, runs)} "
            f"--status` or `squeue -j {ids}`; their logs are in {_folder(spec, runs)}")


def _default_target(spec: dict[str, Any], runs: Path) -> str:
    return f"{spec['name']} --runs {runs}"


# -- submitit --------------------------------------------------------------------------------------------------
def _submitit():
    """The submitit module, or a :class:`SlurmUnavailableError` saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise SlurmUnavailableError("--launcher slurm needs submitit: pip install 'submitit>=1.5,<2' (the cluster "
                                    "extra; in a checkout: pip install -e '.[cluster]')") from None
    return submitit


def _executor(spec: dict[str, Any], runs: Path, options: SlurmOptions):
    submitit = _submitit()
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise SlurmUnavailableError("--launcher slurm needs Slurm's commands (sbatch, srun) on this machine: run it "
                                    "on the cluster's login node, or use --workers N on one machine")
    executor = submitit.SlurmExecutor(folder=_folder(spec, runs), max_num_timeout=MAX_REQUEUES)
    executor.update_parameters(**options.parameters(_job_name(spec)))
    return executor


def _submit_array(executor, job: CellJob, chosen: Sequence[Cell], submission: Submission) -> list[str]:
    """Submit ``chosen`` as one array; returns its job id (the array's) for a dependency."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    if not chosen:
        return []
    said = io.StringIO()  # submitit prints sbatch's error before raising it: said once, in the error's line
    try:
        with contextlib.redirect_stderr(said):
            jobs = executor.map_array(job, [c.name for c in chosen])
    except (FailedJobError, FailedSubmissionError) as err:
        why = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())[:500] or type(err).__name__
        queued = f" (the arrays before it are queued: {', '.join(submission.job_ids)})" if submission.jobs else ""
        raise SubmitError(f"sbatch refused the array of {len(chosen)} cell(s){queued}: {why}") from None
    sys.stderr.write(said.getvalue())
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
    """``jobs.json``: cell name -> ``{job_id, log, submitted, key}`` (the latest submission of each cell; ``key``:
    the cell's settings key when it was submitted)."""
    path = _folder(spec, runs) / JOBS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("job_id"), str)}


def _save_jobs(spec: dict[str, Any], runs: Path, jobs: Mapping[str, Job], keys: Mapping[str, str]) -> None:
    recorded = _load_jobs(spec, runs)
    now = datetime.now().astimezone().isoformat(timespec="milliseconds")
    recorded.update({name: {"job_id": j.job_id, "log": j.log, "submitted": now, "key": keys[name]}
                     for name, j in jobs.items()})
    folder = _folder(spec, runs)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / JOBS_FILE, json.dumps(recorded, indent=2))


def _squeue() -> dict[str, str] | None:
    """This user's jobs in the queue, one entry per array task: job id -> ``queued`` or ``running``; ``None``
    where ``squeue`` cannot be asked."""
    return _ask_squeue()[0]


def _ask_squeue() -> tuple[dict[str, str] | None, str]:
    """:func:`_squeue` and, where it gives ``None``, why (squeue's error in one line)."""
    if shutil.which("squeue") is None:
        return None, "no squeue command here"
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%T"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    if done.returncode != 0:
        said = "; ".join(line.strip() for line in done.stderr.splitlines() if line.strip())[:300]
        return None, said or f"exit status {done.returncode}"
    out = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        out[job_id] = "running" if state in ("RUNNING", "COMPLETING") else "queued"
    return out, ""
