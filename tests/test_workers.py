"""Local workers (``ivit reproduce --workers N``) and several commands on one runs folder: every cell trained once,
a killed worker's cell taken over and finished with the weights of an uninterrupted run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import colour_folder, tiny_spec_base

import instruction_vit
from instruction_vit.artifacts.checkpoint import load_checkpoint
from instruction_vit.studies.runner import run_cells
from instruction_vit.studies.specs import load_spec
from instruction_vit.studies.states import cell_states
from instruction_vit.studies.workers import worker_plans
from instruction_vit.training.run_lock import LOCK_NAME

#: The subprocesses import this checkout's package, not an installed one.
ENV = {**os.environ, "PYTHONPATH": str(Path(instruction_vit.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}


def _spec(tmp_path: Path, name: str, seeds: list[int], epochs: int, per_class: int = 8, **columns) -> Path:
    root = colour_folder(tmp_path / "images", per_class=per_class)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "seeds": seeds,
        "base": tiny_spec_base(root, epochs),
        "columns": {"full": {}, **columns},
        "rows": {"vit": {"label": "ViT"}, "fast": {"label": "ViT, lr 0.01", "config": {"train": {"lr": 0.01}}}},
    }, sort_keys=False))
    return path


def _ivit(*args: str) -> list[str]:
    return [sys.executable, "-m", "instruction_vit", *args]


def _rows(run: Path) -> int:
    return len((run / "metrics.csv").read_text().strip().splitlines()) - 1


def test_workers_share_the_cores_and_the_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    plans = worker_plans(2, cores=[0, 1, 2, 3, 4])
    assert [p.cores for p in plans] == [(0, 1), (2, 3)] and plans[0].environment["OMP_NUM_THREADS"] == "2"
    gpus = worker_plans(3, ["0", "1"], cores=[0, 1])
    assert [p.device for p in gpus] == ["0", "1", "0"] and gpus[1].environment["CUDA_VISIBLE_DEVICES"] == "1"
    assert [p.cores for p in gpus] == [(0,), (1,), (0,)]  # more workers than cores: they share


def test_two_commands_and_two_workers_train_every_cell_once(tmp_path):
    frozen = {"frozen": {"rows": ["vit"], "seeds": [1], "config": {"model": {
        "regime": "linear", "pretrained": "{runs}/tinyw/full/vit/seed1/checkpoints/best.safetensors"}}}}
    spec, runs = _spec(tmp_path, "tinyw", [1, 2], epochs=2, **frozen), tmp_path / "runs"
    commands = [_ivit("reproduce", str(spec), "--runs", str(runs), "--workers", "2"),
                _ivit("reproduce", str(spec), "--runs", str(runs))]
    both = [subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c in commands]
    outputs = [p.communicate(timeout=900)[0] for p in both]
    for process, out in zip(both, outputs):  # done, or some cells left to the other command (said so)
        assert process.returncode == 0 or "in use by another command" in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    cells = [runs / "tinyw" / "full" / row / f"seed{s}" for row in ("vit", "fast") for s in (1, 2)]
    cells.append(runs / "tinyw" / "frozen" / "vit" / "seed1")
    for cell in cells:
        assert _rows(cell) == 2, cell  # one metrics row per epoch: one trainer
        assert json.loads((cell / "cell.json").read_text())["status"] == "done"
        assert not (cell / LOCK_NAME).exists()
    started = sum(out.count("== tinyw/") for out in outputs)
    assert started == len(cells)  # each cell started once, by one of the three processes
    assert {s.state for s in cell_states(load_spec(str(spec)), runs)} == {"done"}


def test_a_killed_workers_cell_is_taken_over_and_ends_as_if_never_interrupted(tmp_path):
    spec, runs = _spec(tmp_path, "tinyk", [1], epochs=20, per_class=16), tmp_path / "runs"
    cell = runs / "tinyk" / "full" / "vit" / "seed1"
    parent = subprocess.Popen(_ivit("reproduce", f"{spec}/full/vit", "--runs", str(runs), "--workers", "2"),
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not ((cell / "metrics.csv").is_file() and _rows(cell) >= 2):
        assert parent.poll() is None and time.time() < deadline, "the cell did not start"
        time.sleep(0.02)
    worker = json.loads((cell / LOCK_NAME).read_text())["pid"]
    os.kill(worker, signal.SIGKILL)  # mid-cell: its claim stays behind
    out = parent.communicate(timeout=900)[0]
    assert parent.returncode == 0, out[-3000:]
    assert f"(pid {worker}) ended by signal 9" in out, out[-3000:]
    # Taken over by the other worker, or by a new round of workers when the other one had ended.
    assert f"took over the lock of pid {worker}" in out and "which no longer runs" in out
    assert "resuming" in out and _rows(cell) == 20  # resumed after its last epoch; one row per epoch

    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(len(worker_plans(2)[0].cores))  # the worker's share: float sums follow the thread count
    try:
        run_cells(load_spec(str(spec)), reference, "full/vit")
    finally:
        torch.set_num_threads(threads)
    mine = load_checkpoint(cell / "checkpoints" / "best.safetensors").model_state()
    theirs = load_checkpoint(reference / "tinyk" / "full" / "vit" / "seed1" / "checkpoints" /
                             "best.safetensors").model_state()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert _numbers(cell) == _numbers(reference / "tinyk" / "full" / "vit" / "seed1")


def _numbers(run: Path) -> list[dict]:
    """The metrics rows less their timings."""
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if "second" not in k} for row in csv.DictReader(f)]


@pytest.mark.parametrize("bad", [["0"], ["0", ""]])
def test_devices_must_name_devices(bad):
    from instruction_vit.errors import ConfigError

    if bad == ["0"]:
        assert worker_plans(1, bad, cores=[0])[0].device == "0"
    else:
        with pytest.raises(ConfigError, match="--devices takes comma-separated device numbers"):
            worker_plans(2, bad, cores=[0])


def test_a_failed_cell_is_recorded_and_reported_while_the_others_go_on(tmp_path):
    from instruction_vit.studies.runner import CellsFailedError

    spec = _spec(tmp_path, "tinyf", [1], epochs=1)
    data = yaml.safe_load(spec.read_text())
    data["rows"]["broken"] = {"label": "Broken", "config": {"data": {"root": str(tmp_path / "images" / "red")}}}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))  # a folder of images, not of class folders
    runs = tmp_path / "runs"
    with pytest.raises(CellsFailedError) as caught:
        run_cells(load_spec(str(spec)), runs, keep_going=True)  # what each worker and Slurm job does
    assert [c.name for c in caught.value.outcome.ran] == ["full/vit/seed1", "full/fast/seed1"]
    assert "1 failed: full/broken/seed1 (" in str(caught.value)
    record = json.loads((runs / "tinyf" / "full" / "broken" / "seed1" / "cell.json").read_text())
    assert record["status"] == "failed" and record["reason"]
    states = {s.cell.name: s for s in cell_states(load_spec(str(spec)), runs)}
    assert states["full/broken/seed1"].state == "failed" and states["full/broken/seed1"].detail == record["reason"]


def test_devices_index_the_devices_this_process_sees(monkeypatch):
    from instruction_vit.errors import ConfigError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a Slurm allocation of two GPUs
    assert [p.device for p in worker_plans(3, ["0", "1"], cores=[0])] == ["2", "3", "2"]
    for bad in (["0", "2"], ["GPU-1"]):
        with pytest.raises(ConfigError, match=r"is not a device here: this process sees 2 device\(s\)"):
            worker_plans(2, bad, cores=[0])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="sees 0 device"):
        worker_plans(1, ["0"], cores=[0])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [p.device for p in worker_plans(2, ["0", "1"], cores=[0])] == ["0", "1"]


#: Started in every interpreter of a test (the workers too): the training of a cell whose folder holds
#: IVIT_TEST_KILL kills its own process, as the kernel's OOM killer would.
KILLER = """
import os, signal
if os.environ.get("IVIT_TEST_KILL"):
    from instruction_vit.training import loop
    _train = loop.train
    def train(config, out, *args, **kwargs):
        if os.environ["IVIT_TEST_KILL"] in str(out):
            os.kill(os.getpid(), signal.SIGKILL)
        return _train(config, out, *args, **kwargs)
    loop.train = train
"""


def test_a_cell_that_kills_its_workers_is_recorded_failed_and_the_others_run(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(KILLER)
    env = {**ENV, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ENV['PYTHONPATH']}",
           "IVIT_TEST_KILL": os.path.join("fast", "seed1")}
    spec, runs = _spec(tmp_path, "tinyo", [1], epochs=1), tmp_path / "runs"
    done = subprocess.run(_ivit("reproduce", f"{spec}/full", "--runs", str(runs), "--workers", "2"), env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert "ran 1 cell(s); 1 failed: full/fast/seed1 (worker killed by signal 9" in out, out[-3000:]
    assert "starting the workers again (round 2)" in out and "round 3" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    cell = runs / "tinyo" / "full"
    assert json.loads((cell / "vit" / "seed1" / "cell.json").read_text())["status"] == "done"
    record = json.loads((cell / "fast" / "seed1" / "cell.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith("worker killed by signal 9"), record


def test_ctrl_c_stops_the_workers_quietly(tmp_path):
    spec, runs = _spec(tmp_path, "tinyc", [1], epochs=50, per_class=16), tmp_path / "runs"
    held = [runs / "tinyc" / "full" / row / "seed1" / LOCK_NAME for row in ("vit", "fast")]
    parent = subprocess.Popen(_ivit("reproduce", f"{spec}/full", "--runs", str(runs), "--workers", "2"), env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not all(lock.is_file() for lock in held):  # each worker holds a cell (past its start-up)
        assert parent.poll() is None and time.time() < deadline, "the cell did not start"
        time.sleep(0.02)
    os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole foreground group
    out = parent.communicate(timeout=120)[0]
    assert parent.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "resume on the next run" in out and "round 2" not in out, out[-3000:]
    assert "ended by" not in out, out[-3000:]
