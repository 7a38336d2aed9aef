"""Cell claims: a run folder's lock with a lease and a heartbeat. A claim whose heartbeat stopped for longer than
its lease is taken over from any host, a requeued Slurm job takes over its own earlier run's claim at once, a lock
without a lease is never taken over from another host, and a holder whose claim was taken over stops."""

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml
from helpers import colour_folder
from typer.testing import CliRunner

from instruction_vit.cli import app
from instruction_vit.training.run_lock import LOCK_NAME, LockHolder, RunFolderInUseError, RunLock

runner = CliRunner()


def _write_lock(folder: Path, age: float = 0.0, **record) -> Path:
    """A lock as another command wrote it, its heartbeat ``age`` seconds old."""
    folder.mkdir(parents=True, exist_ok=True)
    base = {"host": "node-elsewhere", "pid": 4321, "started": "2026-12-04T18:00:00+01:00",
            "command": "ivit reproduce table1", "token": "theirs"}
    path = folder / LOCK_NAME
    path.write_text(json.dumps({**base, **record}))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_leased_lock_records_its_lease_and_its_heartbeat_keeps_it_fresh(tmp_path):
    folder = tmp_path / "cell"
    with RunLock(folder, lease=1.0) as lock:
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["lease"] == 1.0
        os.utime(folder / LOCK_NAME, (time.time() - 50, time.time() - 50))  # as if the heartbeat had stopped
        time.sleep(0.5)  # five beats at a tenth of the lease
        assert lock.heartbeat_age() < 1.0
        assert not RunLock(folder).is_stale(LockHolder.parse((folder / LOCK_NAME).read_bytes()))
    assert not (folder / LOCK_NAME).exists()


def test_a_claim_whose_heartbeat_is_older_than_its_lease_is_taken_over_from_any_host(tmp_path):
    folder = tmp_path / "cell"
    _write_lock(folder, age=30, lease=10)
    lines = []
    with RunLock(folder, lines.append, lease=600):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "pid 4321 on host node-elsewhere" in lines[0] and "heartbeat stopped 30 s ago (lease 10 s)" in lines[0]

    _write_lock(folder, age=5, lease=10)  # within its lease: alive, wherever it runs
    with pytest.raises(RunFolderInUseError, match="in use by pid 4321 on host node-elsewhere"):
        RunLock(folder, lease=600).acquire()
    _write_lock(folder, age=100_000)  # no lease (ivit train): it promised no heartbeat, it never expires
    with pytest.raises(RunFolderInUseError, match="it runs on another host"):
        RunLock(folder, lease=600).acquire()


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_claim(tmp_path, monkeypatch):
    folder = tmp_path / "cell"
    _write_lock(folder, slurm_job_id="77_3", slurm_restarts=0, lease=600)
    monkeypatch.setenv("SLURM_JOB_ID", "77_3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # another process of the same run (local workers in one job)
    with pytest.raises(RunFolderInUseError):
        RunLock(folder, lease=600).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the job, requeued: the earlier run is over
    lines = []
    with RunLock(folder, lines.append, lease=600):
        assert json.loads((folder / LOCK_NAME).read_text())["slurm_restarts"] == 1
    assert "an earlier run of this Slurm job" in lines[0]


@pytest.mark.parametrize("sigint", ["python's handler", "ignored (a shell's background job: cmd &)"])
def test_a_holder_whose_claim_was_taken_over_stops(tmp_path, sigint):
    folder = tmp_path / "cell"
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint.startswith("ignored") else
                           signal.default_int_handler)
    try:
        started = time.monotonic()
        with pytest.raises(RunFolderInUseError, match="another command took it over; this one stopped"):
            with RunLock(folder, lease=0.5):
                _write_lock(folder, lease=600, token="the-new-holder")  # taken over while this one was frozen
                time.sleep(30)  # interrupted by the heartbeat's next beat
        assert time.monotonic() - started < 20
        assert signal.getsignal(signal.SIGINT) == (signal.SIG_IGN if sigint.startswith("ignored") else
                                                   signal.default_int_handler)  # given back as it was
    finally:
        signal.signal(signal.SIGINT, before)
    assert json.loads((folder / LOCK_NAME).read_text())["token"] == "the-new-holder"  # left to its new holder



def test_status_says_who_runs_a_cell_and_its_epoch(tmp_path, live_pid):
    root = colour_folder(tmp_path / "images", per_class=4)
    spec = tmp_path / "tinystatus.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tinystatus", "seeds": [1, 2],
        "base": {"data": {"dataset": "folder", "root": str(root)}, "prompts": {"kind": "none"},
                 "train": {"epochs": 5}},
        "columns": {"full": {}}, "rows": {"vit": {"label": "ViT"}}}))
    runs = tmp_path / "runs"
    cell = runs / "tinystatus" / "full" / "vit" / "seed1"
    _write_lock(cell, host=socket.gethostname(), pid=live_pid, lease=600)
    (cell / "metrics.csv").write_text("epoch,train_loss\n1,1.0\n2,0.9\n")
    seed2 = runs / "tinystatus" / "full" / "vit" / "seed2"
    seed2.mkdir(parents=True)
    (seed2 / "cell.json").write_text(json.dumps({"status": "failed", "reason": "DataError: bad image",
                                                 "log": "/runs/.slurm/12_1_0_log.err"}))
    result = runner.invoke(app, ["reproduce", str(spec), "--runs", str(runs), "--status"])
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "seed" in line}
    assert f"running │ pid {live_pid} on {socket.gethostname()}, epoch 2 of 5" in lines["full/vit/seed1"]
    assert "failed  │ DataError: bad image (log:" in lines["full/vit/seed2"] and "12_1_0_log.err" in result.output
    assert result.output.splitlines()[-1] == "2 cell(s): 1 running, 1 failed"


def test_a_retried_link_on_nfs_that_made_the_lock_holds_it(tmp_path, monkeypatch):
    """NFS may lose the reply of a link that was made: the retry then says the file exists. The lock is ours (the
    temporary file has two links), so it is held with its heartbeat, and released at the end."""
    from instruction_vit.training import run_lock as run_lock_module

    real_link = os.link

    def link_then_lose_the_reply(src, dst):
        real_link(src, dst)
        raise FileExistsError(17, "File exists")

    monkeypatch.setattr(run_lock_module.os, "link", link_then_lose_the_reply)
    folder = tmp_path / "cell"
    with RunLock(folder, lease=600) as lock:
        assert lock.held and lock._heartbeat is not None  # held as its own, not as a nested no-op
    assert not (folder / LOCK_NAME).exists()



def test_an_array_tasks_claim_names_its_job_as_squeue_and_jobs_json_do(tmp_path, monkeypatch):
    """Slurm gives an array task its own SLURM_JOB_ID (1236) besides ARRAYJOB_TASK (1234_2), which squeue, jobs.json
    and --status's queued lines use: a running cell is shown under the same id as when it was queued."""
    monkeypatch.setenv("SLURM_JOB_ID", "1236")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    with RunLock(tmp_path / "cell", lease=600):
        assert json.loads((tmp_path / "cell" / LOCK_NAME).read_text())["slurm_job_id"] == "1234_2"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with RunLock(tmp_path / "single", lease=600):  # a job that is no array task: its own id
        assert json.loads((tmp_path / "single" / LOCK_NAME).read_text())["slurm_job_id"] == "1236"
