"""Wall time of a fixed subset of the offline spec run three ways (sequentially, ``--workers 2``, and as Slurm jobs
on a one-node cluster of this machine), each launcher's overhead per cell, and one training run alone vs two at
once on the same cores (the oversubscription that ``--workers`` avoids).

    python bench/sweep.py [--work DIR] [--epochs 1] [--train-limit 1000] [--skip-slurm]

The subset: the offline spec's ``full/vit`` (seeds 1, 2), ``pretrain/vit`` (seed 1) and ``prompt/linear`` (seeds 1,
2: they start from the pretrain cell's checkpoint, so they run after it), with fewer epochs and training images than
the spec's 4 and 6000 (``--epochs 4 --train-limit 6000`` for the spec's own). Needs Debian's dataset-fashion-mnist
(``make demo`` installs it); the Slurm part needs the local cluster (``scripts/local_slurm.sh``, root) and is
skipped, saying why, where it cannot start.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SUBSET = {"full": {"rows": ["vit"], "seeds": [1, 2]}, "pretrain": None, "prompt": {"rows": ["linear"], "seeds": [1, 2]}}


def subset_spec(work: Path, epochs: int, train_limit: int) -> Path:
    """The offline spec with only the subset's columns, rows and seeds, ``epochs`` and ``train_limit``."""
    spec = yaml.safe_load((SRC / "instruction_vit" / "experiments" / "offline.yaml").read_text())
    spec["name"] = "sweep"
    spec["base"]["train"]["epochs"] = epochs
    spec["base"]["data"]["train_limit"] = train_limit
    spec["columns"] = {name: {**spec["columns"][name], **(narrow or {})} for name, narrow in SUBSET.items()}
    for column in spec["columns"].values():  # {runs}/offline/... -> {runs}/sweep/...
        model = column.get("config", {}).get("model", {})
        if "pretrained" in model:
            model["pretrained"] = model["pretrained"].replace("/offline/", "/sweep/")
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def ivit(*args: str, env: dict | None = None) -> tuple[float, str]:
    """Run ``ivit ARGS`` with this checkout's package; returns (wall seconds, output)."""
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "instruction_vit", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})})
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"ivit {' '.join(args)} failed")
    return time.time() - started, done.stdout


def cell_starts(runs: Path) -> dict[str, float]:
    """When each cell started (``cell.json``'s ``started``, epoch seconds)."""
    out = {}
    for record in runs.glob("sweep/*/*/seed*/cell.json"):
        started = json.loads(record.read_text()).get("started")
        if started:
            out["/".join(record.parent.parts[-3:])] = datetime.fromisoformat(started).timestamp()
    return out


def training_seconds(run: Path) -> float:
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return sum(float(row["epoch_seconds"]) for row in csv.DictReader(f))


def launchers(spec: Path, work: Path, skip_slurm: bool) -> list[tuple[str, float, str]]:
    """(launcher, wall seconds, overhead) for each way of running the subset."""
    rows = []
    for name, extra in (("sequential", []), ("--workers 2", ["--workers", "2"])):
        runs = work / name.strip("-").replace(" ", "")
        t0 = time.time()
        wall, _ = ivit("reproduce", str(spec), "--runs", str(runs), *extra)
        first = min(cell_starts(runs).values()) - t0
        rows.append((name, wall, f"{first:.1f} s to the first cell's start (start-up: Python, torch, the spec)"))
    rows.append(slurm(spec, work) if not skip_slurm else ("Slurm", float("nan"), "skipped (--skip-slurm)"))
    return rows


def slurm(spec: Path, work: Path) -> tuple[str, float, str]:
    """The subset as Slurm jobs (1 CPU each, 2 at once on the 2-CPU node); overhead from each job's submission to its
    cell's start, for the jobs that found a free CPU at once."""
    started = subprocess.run(["bash", str(ROOT / "scripts" / "local_slurm.sh"), "start"], capture_output=True,
                             text=True, timeout=120)
    if started.returncode != 0:
        return "Slurm", float("nan"), f"skipped: {started.stderr.strip()[-200:]}"
    conf = started.stdout.strip().rpartition("SLURM_CONF=")[2]
    runs = work / "slurm"
    wall, _ = ivit("reproduce", str(spec), "--runs", str(runs), "--launcher", "slurm", "--cpus-per-cell", "1",
                   "--time", "60", env={"SLURM_CONF": conf})
    jobs = json.loads((runs / "sweep" / ".slurm" / "jobs.json").read_text())
    starts = cell_starts(runs)
    first_array = min(j["job_id"].split("_")[0] for j in jobs.values())
    waits = sorted(starts[name] - datetime.fromisoformat(j["submitted"]).timestamp() for name, j in jobs.items()
                   if j["job_id"].split("_")[0] == first_array)[:2]  # two CPUs: the first two start at once
    imports = [_job_import_seconds(Path(j["log"])) for j in jobs.values()]
    return ("Slurm (2 CPUs, 1 per cell)", wall,
            f"{statistics.median(waits):.1f} s from submission to the cell's start (median of the 2 jobs that "
            f"started at once; {statistics.median(imports):.1f} s of it in the job: Python, torch, the pickle)")


def _job_import_seconds(log: Path) -> float:
    """From submitit's "Starting" line to our first line in the job's logs."""
    out = log.with_suffix(".out").read_text().splitlines()
    first = next(line for line in out if "Starting with" in line)
    begun = datetime.strptime(first.split("(")[1].split(")")[0], "%Y-%m-%d %H:%M:%S,%f")
    ours = log.read_text().splitlines()[0].split()[0]  # HH:MM:SS
    mine = datetime.combine(begun.date(), datetime.strptime(ours, "%H:%M:%S").time())
    return max(0.0, (mine - begun).total_seconds())


def oversubscription(spec: Path, work: Path) -> list[tuple[str, str, str]]:
    """One cell trained alone (with the machine's threads, and with half), two at once with all threads each
    (oversubscribed), and two at once with half each (what --workers 2 gives them)."""
    cores = len(os.sched_getaffinity(0))
    rows = []
    half = max(1, cores // 2)
    for label, threads, count in ((f"one run alone, {cores} threads", cores, 1),
                                  (f"one run alone, {half} thread(s)", half, 1),
                                  (f"two at once, {cores} threads each", cores, 2),
                                  (f"two at once, {half} thread(s) each (--workers 2)", half, 2)):
        folders = [work / f"over-{threads}-{count}-{k}" for k in range(count)]
        t0 = time.time()
        processes = [subprocess.Popen([sys.executable, "-m", "instruction_vit", "reproduce", f"{spec}/full/vit",
                                       "--seeds", "1", "--runs", str(f)],
                                      env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads)},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for f in folders]
        for p in processes:
            if p.wait() != 0:
                raise SystemExit(f"{label}: a run failed")
        wall = time.time() - t0
        train = [training_seconds(f / "sweep" / "full" / "vit" / "seed1") for f in folders]
        rows.append((label, f"{wall:.0f}", " / ".join(f"{s:.1f}" for s in train)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="Folder for the runs (default: a temporary one).")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs per cell (the spec's: 4).")
    parser.add_argument("--train-limit", type=int, default=1000, help="Training images per cell (the spec's: 6000).")
    parser.add_argument("--skip-slurm", action="store_true", help="Leave out the Slurm launcher.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ivit-sweep-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        spec = subset_spec(work, args.epochs, args.train_limit)
        cores = len(os.sched_getaffinity(0))
        print(f"subset of the offline spec: 5 cells (full/vit x2, pretrain/vit, prompt/linear x2), {args.epochs} "
              f"epoch(s) of {args.train_limit} images each; {cores} cores\n")
        print("| launcher | wall time | overhead per cell |\n|---|---|---|")
        for name, wall, overhead in launchers(spec, work, args.skip_slurm):
            print(f"| {name} | {wall:.0f} s | {overhead} |")
        print("\n| training of full/vit/seed1 | wall time | training seconds per run (sum of epochs) |\n|---|---|---|")
        for label, wall, train in oversubscription(spec, work):
            print(f"| {label} | {wall} s | {train} |")


if __name__ == "__main__":
    main()
