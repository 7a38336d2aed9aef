"""What the benchmark scripts share: each measured configuration runs in a fresh process (its own peak memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_cell(script: str, *args: str) -> dict:
    """Run ``python script *args``; its last line of output is the cell's JSON result."""
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{Path(script).name} {' '.join(args)} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def device_name(cuda: bool) -> str:
    """What the cells ran on, for the table's heading."""
    import torch

    return torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
