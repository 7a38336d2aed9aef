"""One owner per run folder: ``ivit train`` (new, --force, --resume), the library's train and every reproduce cell
hold ``RUN/.lock``; a second command on a folder in use is refused naming the holder, a dead holder's lock on this
host is taken over, and the lock goes away however the run ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import colour_folder, tiny_spec_base
from typer.testing import CliRunner

import instruction_vit
from instruction_vit.cli import app
from instruction_vit.config import load_config
from instruction_vit.errors import UserError
from instruction_vit.training import train
from instruction_vit.training.run_folder import prepare_run_folder
from instruction_vit.training.run_lock import LOCK_NAME, LockHolder, RunFolderInUseError, RunLock
from instruction_vit.training.step import Stepper

runner = CliRunner()
#: The subprocesses import this checkout's package, not an installed one.
ENV = {**os.environ, "PYTHONPATH": str(Path(instruction_vit.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp("data") / "images", per_class=8)


@pytest.fixture
def config(image_root, tmp_path):
    """A tiny plain-ViT run (no prompt encoder: the quickest start), 2 epochs, as a YAML file."""
    path = tmp_path / "run.yaml"
    path.write_text(f"""
data: {{dataset: folder, root: {image_root}, val_fraction: 0.25, img_size: 16, randaugment: null, num_workers: 0}}
prompts: {{kind: none}}
model: {{backbone_kwargs: {{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}}}}
train: {{epochs: 2, batch_size: 8, lr: 0.003, warmup_epochs: 0.5, mixup: 0, cutmix: 0, device: cpu}}
""")
    return path



def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()  # exited and reaped: no process has this pid (until the system reuses it)
    return done.pid


def _write_lock(folder: Path, **record) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"host": socket.gethostname(), "pid": 1, "started": "2026-12-04T18:00:00+01:00",
            "command": "ivit train --out elsewhere", "token": "by-hand"}
    (folder / LOCK_NAME).write_text(json.dumps({**base, **record}))
    return folder / LOCK_NAME


def _ivit(*args: str) -> list[str]:
    return [sys.executable, "-m", "instruction_vit", *args]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {path} appeared"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _rows(run: Path) -> int:
    return len((run / "metrics.csv").read_text().strip().splitlines()) - 1


def _one_line(output: str) -> str:
    return " ".join(output.split())


def test_a_second_train_on_a_folder_in_use_is_refused_and_the_first_finishes_alone(config, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_ivit("train", "--out", str(run), "--config", str(config)), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(run / LOCK_NAME, first)
        os.kill(first.pid, signal.SIGSTOP)  # the first holds the folder for as long as the test needs
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        assert holder["command"].startswith("ivit train --out") and "T" in holder["started"]
        second = subprocess.run(_ivit("train", "--out", str(run), "--config", str(config), "--force"), env=ENV,
                                capture_output=True, text=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, _ = first.communicate(timeout=300)
    assert second.returncode == 2, second.stdout + second.stderr
    message = _one_line(second.stdout)
    assert f"run folder {run} is in use by pid {first.pid} on host {socket.gethostname()} since" in message
    assert "(ivit train --out" in message and f"delete {run / LOCK_NAME}" in message
    assert "Traceback" not in second.stdout + second.stderr
    assert first.returncode == 0, out[-3000:]
    assert _rows(run) == 2  # one row per epoch: the second wrote nothing
    assert not (run / LOCK_NAME).exists()


def test_resume_and_force_on_a_held_folder_are_refused(config, tmp_path, live_pid):
    run = tmp_path / "run"
    cfg = load_config(config, ["train.epochs=1"])
    train(cfg, run, stop_after_epochs=None)
    metrics = (run / "metrics.csv").read_text()
    lock = _write_lock(run, pid=live_pid, slurm_job_id="4242")
    for args in (["--resume"], ["--force", "--config", str(config)]):
        result = runner.invoke(app, ["train", "--out", str(run), *args])
        assert result.exit_code == 2, result.output
        message = _one_line(result.output)
        assert f"is in use by pid {live_pid} on host {socket.gethostname()} since 2026-12-04 18:00:00" in message
        assert "(ivit train --out elsewhere; Slurm job 4242)" in message
    with pytest.raises(RunFolderInUseError, match=f"pid {live_pid}"):
        instruction_vit.train(cfg, run, resume=True)  # the library call too
    assert (run / "metrics.csv").read_text() == metrics and lock.is_file()  # the holder's lock stays


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(config, tmp_path):
    run = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(run, pid=dead)
    result = runner.invoke(app, ["train", "--out", str(run), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"took over the lock of pid {dead} on host {socket.gethostname()}" in _one_line(result.output)
    assert _rows(run) == 2 and not (run / LOCK_NAME).exists()


def test_a_reused_pid_or_a_reboot_makes_a_lock_stale(tmp_path, live_pid):
    lock = RunLock(tmp_path / "run")
    me = socket.gethostname()
    alive = LockHolder(me, live_pid, "2026-12-04T18:00:00", "ivit train")
    assert not lock.is_stale(alive)
    started = int(Path(f"/proc/{live_pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert not lock.is_stale(LockHolder(me, live_pid, "x", "ivit train", pid_start=started))
    assert lock.is_stale(LockHolder(me, live_pid, "x", "ivit train", pid_start=started + 1))  # another process now
    lock.folder.mkdir()
    lock.path.write_text("{}")
    os.utime(lock.path, (1_000_000, 1_000_000))  # written in 1970: before this host's boot
    assert lock.is_stale(LockHolder(me, live_pid, "x", "ivit train", boot_id="an-earlier-boot"))
    os.utime(lock.path)  # written since this boot by a machine of the same name (a cloned VM): left to it
    assert not lock.is_stale(LockHolder(me, live_pid, "x", "ivit train", boot_id="another-machines-boot"))
    assert not lock.is_stale(LockHolder("elsewhere", _dead_pid(), "x", "ivit train"))  # never judged from here


def test_a_lock_from_another_host_is_refused_with_the_way_out(config, tmp_path):
    run = tmp_path / "run"
    lock = _write_lock(run, host="gpu-node-17", pid=_dead_pid())  # that pid means nothing here
    result = runner.invoke(app, ["train", "--out", str(run), "--config", str(config)])
    assert result.exit_code == 2
    message = _one_line(result.output)
    assert "in use by pid" in message and "on host gpu-node-17" in message and "it runs on another host" in message
    assert f"delete {lock} and run again" in message and lock.is_file()
    lock.unlink()  # the way out the message names
    assert runner.invoke(app, ["train", "--out", str(run), "--config", str(config)]).exit_code == 0


@pytest.mark.parametrize("content", [b"", b"\x00\xff not json", b"[1, 2]", b'{"host": "h", "pid": -5}',
                                     b"[" * 100_000, b'{"host": "h", "pid": 7, "command": "' + b"x" * 70_000 + b'"}'])
def test_a_lock_file_that_is_no_record_is_refused_without_quoting_it(config, tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_bytes(content)
    os.utime(run / LOCK_NAME, (time.time() - 60, time.time() - 60))  # not one being written right now
    result = runner.invoke(app, ["train", "--out", str(run), "--config", str(config)])
    assert result.exit_code == 2
    message = _one_line(result.output)
    assert "cannot be read" in message and f"delete {run / LOCK_NAME}" in message
    assert "not json" not in message and "xxx" not in message and "[[" not in message
    assert (run / LOCK_NAME).read_bytes() == content and not (run / "config.yaml").exists()


def test_the_lock_goes_after_a_failed_run_and_the_folder_starts_or_resumes_normally(config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    bad = runner.invoke(app, ["train", "--out", str(run), "--config", str(config), f"data.root={tmp_path / 'no'}"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert not (run / LOCK_NAME).exists()
    assert runner.invoke(app, ["train", "--out", str(run), "--config", str(config)]).exit_code == 0  # no --force

    # Ctrl-C in the second epoch: the lock is released, --resume takes the folder again.
    calls = {"n": 0}
    original = Stepper.run_epoch

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Stepper, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(config), tmp_path / "killed")
    assert not (tmp_path / "killed" / LOCK_NAME).exists() and _rows(tmp_path / "killed") == 1
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "killed"), "--resume"])
    assert result.exit_code == 0, result.output
    assert _rows(tmp_path / "killed") == 2 and not (tmp_path / "killed" / LOCK_NAME).exists()


def test_sigterm_removes_the_lock(config, tmp_path, monkeypatch):
    def terminated(self, *args, **kwargs):  # `kill PID` (or Slurm's end of job) in the middle of an epoch
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives here
        raise AssertionError("SIGTERM did not end the run")

    monkeypatch.setattr(Stepper, "run_epoch", terminated)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as ended:
        train(load_config(config), run)
    assert ended.value.code == 128 + signal.SIGTERM
    assert not (run / LOCK_NAME).exists() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with RunLock(run) as lock:  # free, and nothing to take over
        assert lock.held


def test_the_lock_api(tmp_path, live_pid):
    folder = tmp_path / "new" / "run"
    lock = RunLock(folder)
    with lock:
        holder = lock.holder()
        assert holder.pid == os.getpid() and holder.host == socket.gethostname() and holder.token
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM ends through finally
        with RunLock(folder) as inner:  # this process again (a reproduce cell, then its training): goes on under it
            assert inner.held
        assert (folder / LOCK_NAME).is_file()  # the inner one did not remove the outer's lock
        assert {p.name for p in folder.iterdir()} == {LOCK_NAME}  # no temporary file left beside it
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and lock.holder() is None
    assert not folder.exists()  # acquire made it, nothing was written in it: gone with the lock

    # Only its own lock is removed: one replaced by hand while held stays with its new holder.
    folder.mkdir(parents=True)
    lock = RunLock(folder).acquire()
    replaced = _write_lock(folder, pid=live_pid)
    lock.release()
    assert replaced.is_file()

    # Two commands taking over one stale lock: the one that renamed a lock it did not judge puts it back.
    replaced.write_bytes(b'{"host": "h", "pid": 5, "token": "fresh"}')
    assert not RunLock(folder)._take_over(judged=b"the stale record this command read")
    assert json.loads(replaced.read_bytes())["token"] == "fresh"
    assert {p.name for p in folder.iterdir()} == {LOCK_NAME}


def test_a_folder_holding_only_a_lock_is_an_unused_run_folder(tmp_path, live_pid):
    run = tmp_path / "run"
    _write_lock(run, pid=live_pid)
    (run / f"{LOCK_NAME}.0123.tmp").write_text("{}")  # left by a command killed while it took the lock
    prepare_run_folder(run, resume=False, force=False)  # the lock is not content: no --force needed
    (run / "config.yaml").write_text("{}")
    prepare_run_folder(run, resume=False, force=False)  # started but no checkpoint: started again


def test_a_model_folder_saved_from_a_held_run_has_no_lock(config, tmp_path, live_pid):
    from instruction_vit.artifacts.sharing import save_pretrained
    from instruction_vit.hub_source import is_model_folder

    run = tmp_path / "run"
    train(load_config(config, ["train.epochs=1"]), run)
    _write_lock(run, pid=live_pid)  # a resumed run holds it: reading is not refused
    saved = save_pretrained(run, tmp_path / "model")
    assert LOCK_NAME not in {p.name for p in saved.iterdir()} and is_model_folder(saved)
    assert not is_model_folder(run)


@pytest.fixture
def spec(image_root, tmp_path):
    path = tmp_path / "tinylock.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tinylock", "seeds": [1, 2, 3],
        "base": tiny_spec_base(image_root),
        "columns": {"full": {}},
        "rows": {"vit": {"label": "ViT"}},
    }, sort_keys=False))
    return path


def test_two_reproduce_commands_train_each_cell_once_and_skip_held_cells(spec, tmp_path):
    runs = tmp_path / "runs"
    cells = {s: runs / "tinylock" / "full" / "vit" / f"seed{s}" for s in (1, 2, 3)}
    with RunLock(cells[1]):  # a third command holds seed 1 throughout
        args = _ivit("reproduce", str(spec), "--runs", str(runs))
        both = [subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in both]
        assert {p.name for p in cells[1].iterdir()} == {LOCK_NAME}  # nothing written into the held cell
    for process, out in zip(both, outputs):
        message = _one_line(out)
        assert process.returncode == 2, out[-3000:]
        assert f"full/vit/seed1: held by pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "; skipped" in message and "Run the same command again once they finish" in message
    for seed in (2, 3):
        assert _rows(cells[seed]) == 1  # one metrics row for its one epoch: trained by one command
        assert json.loads((cells[seed] / "cell.json").read_text())["status"] == "done"
        assert not (cells[seed] / LOCK_NAME).exists()
    trained = sum(_one_line(out).count("== tinylock/full/vit/seed") for out in outputs)
    assert trained == 2

    result = runner.invoke(app, ["reproduce", str(spec), "--runs", str(runs)])  # seed 1 is free now
    assert result.exit_code == 0, result.output
    assert "full/vit/seed2: done" in result.output and "ran 1 cell(s)" in result.output
    assert _rows(cells[1]) == 1 and not (cells[1] / LOCK_NAME).exists()


def test_a_cell_held_by_another_command_is_skipped_in_process(spec, tmp_path, live_pid):
    from instruction_vit.studies.runner import CellsInUseError, run_cells
    from instruction_vit.studies.specs import load_spec

    runs = tmp_path / "runs"
    held = runs / "tinylock" / "full" / "vit" / "seed2"
    _write_lock(held, pid=live_pid)
    with pytest.raises(CellsInUseError) as caught:
        run_cells(load_spec(str(spec)), runs, seeds=[1, 2])
    err = caught.value
    assert isinstance(err, UserError) and [c.name for c in err.done] == ["full/vit/seed1"]
    assert [c.name for c, _ in err.skipped] == ["full/vit/seed2"] and f"pid {live_pid}" in str(err)
    assert {p.name for p in held.iterdir()} == {LOCK_NAME}
