"""Smoke runs of the benchmark scripts at a tiny size: the GPU modes cannot run here, the code they share can."""

import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_end_to_end_training_benchmark(tmp_path):
    out = _run(str(BENCH / "train_e2e.py"), "--mode", "tiny", "--cells", "store-k1", "--work", str(tmp_path))
    row = re.search(r"^\| store-k1 \| store \+ device augmentation \| K\+1 = 2 \| (\d+) \| (\d+) \|", out, re.M)
    assert row and int(row[1]) > 0 and int(row[2]) > 0, out
    metrics = (tmp_path / "runs" / "store-k1" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # the table's figure is read from the run's own metrics
    assert round(json.loads(metrics[1])["train_images_per_second"]) == int(row[1])


def test_step_benchmark_measures_one_configuration():
    result = json.loads(_run(str(BENCH / "throughput.py"), "--mode", "tiny", "--one", "K+1 selection|0")
                        .strip().splitlines()[-1])
    assert result["tokens"] == 1 + 16 + 2  # [CLS], 4x4 patches, K+1 = 2 prompts
    assert result["train_img_s"] > 0 and result["eval_img_s"] > 0 and result["peak_gib"] > 0
