"""Cells as Slurm jobs on a real scheduler: a one-node Slurm on this machine (``scripts/local_slurm.sh``, Debian's
slurmctld, slurmd, slurm-client and munge, which ``make test`` installs). Skipped, with the reason, where it cannot
start (not installed, not root).

Through it: tiny offline cells give the numbers, keys and weights of the sequential run; a cell that evaluates
another's model starts only after it; a job signalled mid-cell (Slurm's USR2 before a time limit) is requeued and
ends with the weights of an uninterrupted run; a cell with two tasks trains with DDP across them.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from helpers import COLOURS, colour_folder, tiny_spec_base
from typer.testing import CliRunner

import instruction_vit
from instruction_vit.artifacts.checkpoint import load_checkpoint
from instruction_vit.cli import app
from instruction_vit.studies.runner import prepare, run_cells
from instruction_vit.studies.slurm import SlurmOptions, submit, watch
from instruction_vit.studies.specs import load_spec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "local_slurm.sh"
FAST = (0.5, 2.0)  # seconds between looks at the jobs
runner = CliRunner()


@pytest.fixture(scope="module")
def slurm():
    """The local cluster (started here unless one runs already), with this checkout's package for its jobs."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed (make test installs slurmctld, slurmd, slurm-client and munge)")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm runs as root (slurmd starts the jobs)")
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"the local Slurm did not start: {started.stderr.strip()[-300:]}")
    conf = started.stdout.strip().rpartition("SLURM_CONF=")[2]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", conf)
        env.setenv("PYTHONPATH", str(Path(instruction_vit.__file__).resolve().parents[1]))
        env.setenv("OMP_NUM_THREADS", "1")
        yield conf
    if "started" in started.stderr:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=60)


@pytest.fixture
def one_thread():
    """The sequential reference runs with the jobs' one CPU: float sums follow the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(tmp_path: Path, name: str, epochs: int, columns: dict, rows: dict, per_class: int = 8, **base) -> Path:
    root = colour_folder(tmp_path / "images", per_class=per_class)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "seeds": [1],
        "base": tiny_spec_base(root, epochs, **base),
        "columns": columns, "rows": rows}, sort_keys=False))
    return path


def _numbers(run: Path) -> list[dict]:
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if "second" not in k} for row in csv.DictReader(f)]


def _same_weights(a: Path, b: Path) -> bool:
    mine, theirs = (load_checkpoint(p / "checkpoints" / "best.safetensors").model_state() for p in (a, b))
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _record(cell: Path) -> dict:
    return json.loads((cell / "cell.json").read_text())


def test_slurm_jobs_give_the_sequential_numbers_and_evaluate_after_their_sources(slurm, tmp_path, tiny_clip_dir,
                                                                                    one_thread):
    target = colour_folder(tmp_path / "target", per_class=8, colours={"crimson": COLOURS["red"],
                                                                      "lime": COLOURS["green"]})
    spec_path = _spec(
        tmp_path, "tinyslurm", 2,
        columns={"source": {}, "target": {"evaluate": {"from": "source"}, "config": {"data": {"root": str(target)}}}},
        rows={"vit": {"label": "ViT", "config": {"prompts": {"kind": "none"}}},
              "ours": {"label": "Ours", "config": {"prompts": {"kind": "text"}}}},
        prompts={"encoder": f"open_clip:local-dir:{tiny_clip_dir}", "templates": "photo",
                 "cache_dir": str(tmp_path / "cache")})
    spec, sequential, on_slurm = load_spec(str(spec_path)), tmp_path / "sequential", tmp_path / "slurm"
    run_cells(spec, sequential)

    found = prepare(spec, on_slurm)
    submission = submit(spec, on_slurm, found, SlurmOptions(cpus_per_cell=1, time=10))
    ids = {name: job.job_id for name, job in submission.jobs.items()}
    assert ids["source/vit/seed1"].split("_")[0] == ids["source/ours/seed1"].split("_")[0]  # one array
    assert ids["target/ours/seed1"].split("_")[0] != ids["source/ours/seed1"].split("_")[0]  # a second, after it
    outcome = watch(spec, on_slurm, found, every=FAST, timeout=600)
    assert not outcome.failed and len(outcome.ran) == 3  # the plain ViT's target: not run, as sequentially

    for cell in ("source/vit/seed1", "source/ours/seed1", "target/ours/seed1", "target/vit/seed1"):
        a, b = sequential / "tinyslurm" / cell, on_slurm / "tinyslurm" / cell
        assert _record(a)["key"] == _record(b)["key"], cell  # the same settings key, wherever it ran
        assert _record(a)["status"] == _record(b)["status"], cell
        if (a / "results.json").is_file():
            assert json.loads((a / "results.json").read_text())["top1"] == \
                json.loads((b / "results.json").read_text())["top1"], cell
    for cell in ("source/vit/seed1", "source/ours/seed1"):
        a, b = sequential / "tinyslurm" / cell, on_slurm / "tinyslurm" / cell
        assert _numbers(a) == _numbers(b) and _same_weights(a, b), cell
    evaluated = on_slurm / "tinyslurm" / "target" / "ours" / "seed1"
    started = datetime.fromisoformat(_record(evaluated)["started"]).timestamp()
    trained = on_slurm / "tinyslurm" / "source" / "ours" / "seed1" / "results.json"
    assert started >= int(trained.stat().st_mtime)  # it began after its source had its results

    status = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(on_slurm), "--status"])
    assert status.exit_code == 0 and status.output.splitlines()[-1] == "4 cell(s): 1 to run, 3 done"


def test_a_job_signalled_mid_cell_is_requeued_and_ends_with_the_weights_of_an_uninterrupted_run(
        slurm, tmp_path, one_thread):
    spec_path = _spec(tmp_path, "tinyrequeue", 60, per_class=16, columns={"full": {}},
                      rows={"vit": {"label": "ViT"}}, prompts={"kind": "none"})
    spec, runs = load_spec(str(spec_path)), tmp_path / "runs"
    submitted = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(runs), "--launcher", "slurm",
                                    "--cpus-per-cell", "1", "--time", "10", "--no-wait"])
    assert submitted.exit_code == 0, submitted.output
    assert "the jobs keep running: watch them with `ivit reproduce" in " ".join(submitted.output.split())
    recorded = json.loads((runs / "tinyrequeue" / ".slurm" / "jobs.json").read_text())["full/vit/seed1"]
    job, log = recorded["job_id"], Path(recorded["log"])
    cell = runs / "tinyrequeue" / "full" / "vit" / "seed1"
    _wait(lambda: (cell / "metrics.csv").is_file() and len(_numbers(cell)) >= 2, "the cell's second epoch")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what Slurm sends before the time limit
    _wait(lambda: _queue_state(job) == "PENDING" and _steps_gone(job), "the job requeued, its first run ended")
    time.sleep(1)  # Slurm holds a requeued job 2 minutes so that its first run's end is counted first
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    found = prepare(spec, runs)
    outcome = watch(spec, runs, found, every=FAST, timeout=600)
    assert not outcome.failed and [c.name for c in outcome.ran] == ["full/vit/seed1"]

    text = log.read_text() + log.with_suffix(".out").read_text()  # ours, then submitit's
    assert f"Requeued job {job}" in text and "requeued; it resumes from its last checkpoint" in text
    resumed_after = int(text.split("after epoch ")[1].split()[0])
    assert 2 <= resumed_after < 60  # interrupted mid-cell, resumed from its last checkpoint
    run_cells(spec, tmp_path / "uninterrupted")
    reference = tmp_path / "uninterrupted" / "tinyrequeue" / "full" / "vit" / "seed1"
    assert _numbers(cell) == _numbers(reference) and len(_numbers(cell)) == 60  # one row per epoch
    assert _same_weights(cell, reference)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two tasks need two CPUs")
def test_a_cell_with_two_tasks_trains_with_ddp(slurm, tmp_path):
    spec_path = _spec(tmp_path, "tinyddp", 2, columns={"full": {}}, rows={"vit": {"label": "ViT"}},
                      prompts={"kind": "none"})
    spec, runs = load_spec(str(spec_path)), tmp_path / "runs"
    found = prepare(spec, runs)
    submit(spec, runs, found, SlurmOptions(cpus_per_cell=2, time=10, tasks_per_cell=2))  # as --gpus-per-cell 2
    outcome = watch(spec, runs, found, every=FAST, timeout=600)
    assert not outcome.failed, outcome.failed
    cell = runs / "tinyddp" / "full" / "vit" / "seed1"
    assert len(_numbers(cell)) == 2 and _record(cell)["status"] == "done"  # rank 0 alone wrote the folder
    rank0, rank1 = (p.read_text() for p in sorted((runs / "tinyddp" / ".slurm").glob("*_log.err")))
    assert "epoch 2:" in rank0  # rank 0 logs the epochs; rank 1 ran the same cell in its process group, silent
    assert "== tinyddp/full/vit/seed1 ==" in rank1 and "epoch" not in rank1 and "skipped" not in rank1


def _wait(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def _steps_gone(job: str) -> bool:
    """Whether no slurmstepd of the job's earlier run is left on this node."""
    return subprocess.run(["pgrep", "-f", f"slurmstepd: \\[{job}\\."], capture_output=True).returncode == 1


def _queue_state(job: str) -> str:
    done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return done.stdout.strip()


def test_a_dry_run_shows_each_array_and_its_sbatch_lines_without_a_cluster(tmp_path):
    spec_path = _spec(tmp_path, "tinydry", 1, rows={"vit": {"label": "ViT"}}, prompts={"kind": "none"}, columns={
        "full": {}, "frozen": {"config": {"model": {
            "regime": "linear", "pretrained": "{runs}/tinydry/full/vit/seed1/checkpoints/best.safetensors"}}}})
    result = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(tmp_path / "runs"), "--launcher", "slurm",
                                 "--dry-run", "--cpus-per-cell", "2", "--mem-per-cell", "8G", "--partition", "gpu",
                                 "--slurm-arg", "constraint=a100", "--slurm-arg", "exclusive"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "would submit 2 cell(s)" in lines and "array 1: full/vit/seed1" in lines
    first = lines[lines.index("array 1: full/vit/seed1") + 1:lines.index("array 2: frozen/vit/seed1")]
    for line in ("#SBATCH --cpus-per-task=2", "#SBATCH --mem=8G", "#SBATCH --partition=gpu",
                 "#SBATCH --constraint=a100", "#SBATCH --exclusive", "#SBATCH --time=1440"):
        assert f"  {line}" in first, line
    assert "  #SBATCH --dependency='afterany:<array 1>'" in lines  # the frozen cell reads the full cell's model
    assert not (tmp_path / "runs").exists()  # nothing submitted, nothing written


def test_launcher_options_that_do_not_go_together_are_refused(tmp_path, monkeypatch):
    spec_path = _spec(tmp_path, "tinyopts", 1, columns={"full": {}}, rows={"vit": {"label": "ViT"}},
                      prompts={"kind": "none"})
    args = ["reproduce", str(spec_path), "--runs", str(tmp_path / "runs")]
    for extra, message in ((["--partition", "gpu"], "--partition go with --launcher slurm"),
                           (["--devices", "0,1"], "--devices goes with --workers N"),
                           (["--launcher", "slurm", "--workers", "2"], "each cell is a job"),
                           (["--launcher", "slurm", "--mem-per-cell", "lots"], "--mem-per-cell takes Slurm's --mem"),
                           (["--launcher", "pbs"], "--launcher is local or slurm")):
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (extra, result.output)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    result = runner.invoke(app, [*args, "--launcher", "slurm"])
    assert result.exit_code == 2 and "needs Slurm's commands (sbatch, srun)" in " ".join(result.output.split())


# -- without a cluster: a fake sbatch, srun and squeue on PATH ------------------------------------------------------
FAKE_SBATCH = """#!/bin/sh
# records each script; refuses a partition named gpux, or any array with a dependency when $DIR/refuse_dependent is
cat "$1" >> "$DIR/scripts"; echo '----' >> "$DIR/scripts"
if grep -q 'partition=gpux' "$1"; then
  echo "sbatch: error: invalid partition specified: gpux" >&2
  echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1
fi
if [ -e "$DIR/refuse_dependent" ] && grep -q dependency "$1"; then echo "sbatch: error: refused" >&2; exit 1; fi
n=$(( $(cat "$DIR/count" 2>/dev/null || echo 0) + 1 )); echo $n > "$DIR/count"
echo "Submitted batch job $n"
"""
FAKE_SQUEUE = """#!/bin/sh
# the queue in $DIR/queue; fails while $DIR/squeue_fails counts down (or always if it holds 'always')
if [ -e "$DIR/squeue_fails" ]; then
  left=$(cat "$DIR/squeue_fails")
  if [ "$left" = always ] || [ "$left" -gt 0 ]; then
    [ "$left" = always ] || echo $(( left - 1 )) > "$DIR/squeue_fails"
    echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1
  fi
fi
cat "$DIR/queue" 2>/dev/null; exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A folder with fake sbatch, srun and squeue first on PATH; the scripts sbatch got in ``scripts``, the queue
    squeue reports in ``queue`` (``JOBID|STATE`` lines)."""
    folder = tmp_path / "fake"
    folder.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("srun", "#!/bin/sh\nexit 0\n")):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    monkeypatch.setenv("DIR", str(folder))
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return folder


def _chain_spec(tmp_path: Path, name: str = "tinychain") -> Path:
    """full/vit, and frozen/vit starting from full/vit's model."""
    return _spec(tmp_path, name, 1, rows={"vit": {"label": "ViT"}}, prompts={"kind": "none"}, columns={
        "full": {}, "frozen": {"config": {"model": {
            "regime": "linear", "pretrained": f"{{runs}}/{name}/full/vit/seed1/checkpoints/best.safetensors"}}}})


def _scripts(fake: Path) -> list[str]:
    return [s for s in (fake / "scripts").read_text().split("----\n") if s.strip()]


def _jobs(runs: Path, name: str) -> dict:
    return json.loads((runs / name / ".slurm" / "jobs.json").read_text())


def test_a_cell_reading_a_queued_cell_of_an_earlier_submission_starts_after_its_job(tmp_path, fake_slurm):
    spec, runs = load_spec(str(_chain_spec(tmp_path))), tmp_path / "runs"
    first = submit(spec, runs, prepare(spec, runs, "full"), SlurmOptions())
    source_job = first.jobs["full/vit/seed1"].job_id
    (fake_slurm / "queue").write_text(f"{source_job}|PENDING\n")
    second = submit(spec, runs, prepare(spec, runs, "frozen"), SlurmOptions())
    assert list(second.jobs) == ["frozen/vit/seed1"]
    assert f"#SBATCH --dependency=afterany:{source_job}" in _scripts(fake_slurm)[-1]


def test_a_cell_reading_a_cell_run_outside_slurm_is_not_submitted(tmp_path, fake_slurm):
    from instruction_vit.studies.claims import claim
    from instruction_vit.studies.slurm import SubmitError

    spec, runs = load_spec(str(_chain_spec(tmp_path))), tmp_path / "runs"
    source = prepare(spec, runs, "full")[0]
    source.folder.mkdir(parents=True)
    with claim(source), pytest.raises(SubmitError, match="reads full/vit/seed1, which pid .* runs outside Slurm"):
        submit(spec, runs, prepare(spec, runs, "frozen"), SlurmOptions())
    assert not (fake_slurm / "scripts").exists()


def test_watch_retries_a_failing_squeue_then_stops_with_its_error(tmp_path, fake_slurm):
    from instruction_vit.studies.slurm import WaitTimeoutError

    spec, runs = load_spec(str(_chain_spec(tmp_path))), tmp_path / "runs"
    found = prepare(spec, runs, "full")
    submit(spec, runs, found, SlurmOptions())
    (fake_slurm / "squeue_fails").write_text("2")  # twice, then an empty queue: the job ended, the cell not run
    outcome = watch(spec, runs, found, every=(0.01, 0.01))
    assert not outcome.ran and [c.name for c, _ in outcome.failed] == ["full/vit/seed1"]
    (fake_slurm / "squeue_fails").write_text("always")
    with pytest.raises(WaitTimeoutError, match="squeue failed 5 times in a row .*Unable to contact slurm controller"
                                               ".*ivit reproduce tinychain --runs .* --status"):
        watch(spec, runs, found, every=(0.01, 0.01))


def test_a_refused_sbatch_is_one_line_and_the_arrays_queued_before_it_are_recorded(tmp_path, fake_slurm):
    from instruction_vit.studies.slurm import SubmitError

    spec_path = _chain_spec(tmp_path)
    spec, runs = load_spec(str(spec_path)), tmp_path / "runs"
    result = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(runs), "--launcher", "slurm",
                                 "--partition", "gpux", "--no-wait"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "sbatch refused the array of 1 cell(s): sbatch: error: invalid partition" \
        in output, result.output
    assert "Traceback" not in result.output
    (fake_slurm / "refuse_dependent").touch()
    with pytest.raises(SubmitError, match="the arrays before it are queued: 1"):
        submit(spec, runs, prepare(spec, runs), SlurmOptions())
    assert _jobs(runs, "tinychain")["full/vit/seed1"]["job_id"] == "1"  # kept: a rerun does not submit it twice


def test_a_queued_cell_whose_settings_changed_is_refused_with_its_scancel(tmp_path, fake_slurm):
    from instruction_vit.studies.slurm import SubmitError

    spec, runs = load_spec(str(_chain_spec(tmp_path))), tmp_path / "runs"
    first = submit(spec, runs, prepare(spec, runs, "full"), SlurmOptions())
    job = first.jobs["full/vit/seed1"].job_id
    assert isinstance(_jobs(runs, "tinychain")["full/vit/seed1"]["key"], str)
    (fake_slurm / "queue").write_text(f"{job}|PENDING\n")
    again = submit(spec, runs, prepare(spec, runs, "full"), SlurmOptions())  # the same settings: left to its job
    assert not again.jobs and [s.state for s in again.left] == ["queued"]
    with pytest.raises(SubmitError, match=f"queued as Slurm job {job} with other settings .*`scancel {job}`"):
        submit(spec, runs, prepare(spec, runs, "full", overrides=["train.lr=0.01"]), SlurmOptions(),
               overrides=["train.lr=0.01"])


def test_a_queued_cell_whose_source_finished_since_is_left_to_its_job(tmp_path, fake_slurm):
    """The same command run again while the grid is half done: frozen's job, submitted when full's checkpoint did
    not exist yet, is still the job for frozen's settings once full has made it (no scancel asked for)."""
    from instruction_vit.studies.keys import Identities, cell_settings, settings_key

    spec, runs = load_spec(str(_chain_spec(tmp_path))), tmp_path / "runs"
    found = prepare(spec, runs)
    first = submit(spec, runs, found, SlurmOptions())
    job = first.jobs["frozen/vit/seed1"].job_id
    source = next(c for c in found if c.name == "full/vit/seed1")  # it ran and finished since
    best = source.folder / "checkpoints" / "best.safetensors"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"the source's model, made since")
    (source.folder / "results.json").write_text(json.dumps({"top1": 50.0}))
    (source.folder / "cell.json").write_text(json.dumps({"status": "done",
                                                         "key": settings_key(cell_settings(source, Identities()))}))
    (fake_slurm / "queue").write_text(f"{job}|PENDING\n")
    again = submit(spec, runs, prepare(spec, runs), SlurmOptions())
    assert not again.jobs and sorted(s.state for s in again.left) == ["done", "queued"]


def test_a_cell_reading_a_cell_neither_done_nor_sent_is_refused(tmp_path, fake_slurm):
    """A prompt cell submitted alone, its backbone's cell never run: the job could only fail (weights missing)."""
    from instruction_vit.studies.slurm import SubmitError

    spec, runs = load_spec(str(_chain_spec(tmp_path))), tmp_path / "runs"
    with pytest.raises(SubmitError, match=r"frozen/vit/seed1 reads full/vit/seed1, which is not done and not in this "
                                          r"submission: select it too \(ivit reproduce tinychain/full\)"):
        submit(spec, runs, prepare(spec, runs, "frozen"), SlurmOptions())
    assert not (fake_slurm / "scripts").exists()


def test_a_dry_run_without_submitit_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit: ImportError
    spec_path = _chain_spec(tmp_path)
    result = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(tmp_path / "runs"), "--launcher",
                                 "slurm", "--dry-run"])
    assert result.exit_code == 2 and "--launcher slurm needs submitit" in " ".join(result.output.split())


def test_a_dry_run_with_force_counts_the_finished_cells_it_would_rerun(tmp_path):
    from instruction_vit.studies.keys import Identities, cell_settings, settings_key

    spec_path = _spec(tmp_path, "tinydone", 1, columns={"full": {}}, rows={"vit": {"label": "ViT"}},
                      prompts={"kind": "none"})
    spec, runs = load_spec(str(spec_path)), tmp_path / "runs"
    cell = prepare(spec, runs)[0]
    cell.folder.mkdir(parents=True)
    (cell.folder / "results.json").write_text(json.dumps({"top1": 50.0}))
    (cell.folder / "cell.json").write_text(json.dumps({"status": "done",
                                                       "key": settings_key(cell_settings(cell, Identities()))}))
    args = ["reproduce", str(spec_path), "--runs", str(runs), "--launcher", "slurm", "--dry-run"]
    plain, forced = runner.invoke(app, args), runner.invoke(app, [*args, "--force"])
    assert "full/vit/seed1" in plain.output and "(done: top-1 50.00" in plain.output
    assert "would submit 0 cell(s)" in plain.output.splitlines(), plain.output
    assert "would submit 1 cell(s)" in forced.output.splitlines(), forced.output


def test_the_watch_hint_names_the_spec_s_slurm_folder_for_a_spec_path(tmp_path, fake_slurm):
    spec_path = _chain_spec(tmp_path)
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["reproduce", f"{spec_path}/full", "--runs", str(runs), "--launcher", "slurm",
                                 "--seeds", "1", "--no-wait", "train.lr=0.01"])
    output = "".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert str(runs.resolve() / "tinychain" / ".slurm") in output and "tinychain.yaml/.slurm" not in output
    # the way to watch repeats the command's selection, seeds and overrides: --status shows its cells as submitted
    assert f"`ivitreproduce{spec_path}/full--runs{runs}--seeds1train.lr=0.01--status`" in output


def test_seeds_that_are_not_comma_separated_integers_are_one_line(tmp_path):
    spec_path = _chain_spec(tmp_path)
    result = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(tmp_path / "runs"),
                                 "--seeds", "0-2", "--dry-run"])
    assert result.exit_code == 2 and "--seeds takes comma-separated integers" in " ".join(result.output.split())
    for given, said in (("", "--seeds takes comma-separated integers"), ("1,1", "--seeds names a seed twice"),
                        ("-1", "--seeds takes seeds of 0 or more")):
        result = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(tmp_path / "runs"),
                                     "--seeds", given, "--dry-run"])
        assert result.exit_code == 2 and said in " ".join(result.output.split()), given
