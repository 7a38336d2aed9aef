"""The run folder: what it holds, when it may be (re)used, and its metric files.

::

    config.yaml            resolved config, written before training
    metrics.csv / .jsonl   one row per epoch (losses, validation top-1, lr, seconds, training img/s)
    checkpoints/last.safetensors   weights + optimizer + RNG state (resume)
    checkpoints/best.safetensors   weights of the best validation epoch (eval, predict)
    results.json           test metrics of the best checkpoint, with and without prompt selection
    .lock                  while a command writes the folder: who it is (see :mod:`.run_lock`)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import RunFolderError
from ..files import write_text
from .run_lock import LOCK_NAME, is_lock_entry

#: What a run folder holds; a folder with only some of these and no checkpoint is a run that failed before its first
#: checkpoint (a bad data root, say): it is started again without --force. The lock (and its temporary files) is no
#: content: a folder holding only a lock is empty.
RUN_ENTRIES = frozenset({"config.yaml", "metrics.csv", "metrics.jsonl", "results.json", "checkpoints", "tensorboard",
                         "cell.json", LOCK_NAME})
#: Config keys a resumed run may change: they say how it runs, not what it computes.
RESUME_SAFE = ("train.device", "train.log_every", "train.tensorboard", "train.compile", "data.num_workers",
               "data.store_dir", "prompts.cache_dir")


def prepare_run_folder(out: Path, resume: bool, force: bool) -> None:
    """Check that ``out`` may be used as asked (RunFolderError otherwise) and clear what a new run replaces. The
    caller holds the folder's lock (:class:`.run_lock.RunLock`)."""
    last = out / "checkpoints" / "last.safetensors"
    if resume:
        if not last.is_file():
            raise RunFolderError(f"nothing to resume in {out}: {last} does not exist")
        return
    if out.exists() and _content(out) and not force and not _unstarted_run(out):
        raise RunFolderError(f"run folder {out} already exists and is not empty; pass --resume to continue it "
                             "or --force to start over in it")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.csv", "metrics.jsonl", "results.json"):
        (out / stale).unlink(missing_ok=True)
    for ckpt in (out / "checkpoints").glob("*.safetensors"):
        ckpt.unlink()


def _unstarted_run(out: Path) -> bool:
    """A run folder that failed before its first checkpoint: nothing in it but what a run writes, no checkpoint."""
    entries = _content(out)
    return entries <= RUN_ENTRIES and "results.json" not in entries and not any((out / "checkpoints").glob("*"))


def _content(out: Path) -> set[str]:
    """The names in ``out`` but the lock's."""
    return {p.name for p in out.iterdir() if not is_lock_entry(p.name)}


def resume_changes(saved: Config, cfg: Config) -> list[str]:
    """Keys whose value ``cfg`` changes from the run's saved config, as ``key: old -> new``; refuses (RunFolderError)
    a change to anything but :data:`RESUME_SAFE`."""
    old, new = saved.flat(), cfg.flat()
    changed = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    unsafe = [k for k in changed if k not in RESUME_SAFE]
    if unsafe:
        shown = ", ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in unsafe[:3])
        raise RunFolderError(
            f"--resume continues the run as it was set up, and {shown} would change what it computes (the schedule, "
            f"data or model of the steps already taken). A resumed run may change only {', '.join(RESUME_SAFE)}. "
            "To go on differently, start a new run from this one's weights: ivit train --out NEW "
            "model.pretrained=RUN/checkpoints/last.safetensors ...")
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()]


def write_config(out: Path, cfg: Config) -> None:
    """The resolved config, written atomically (a reader never sees half a file)."""
    text = cfg.to_yaml()
    write_text(out / "config.yaml", text)


def append_metrics(out: Path, row: dict[str, Any], writer) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    path = out / "metrics.csv"
    header = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if header:
            w.writeheader()
        w.writerow(row)
    if writer is not None:
        for key, value in row.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key, value, row["epoch"])


def rewrite_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """On resume, drop metric rows of epochs after the checkpoint (they will be recomputed)."""
    for stale in ("metrics.csv", "metrics.jsonl"):
        (out / stale).unlink(missing_ok=True)
    for row in history:
        append_metrics(out, row, None)


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
