"""A cell folder's record, ``cell.json``: the settings key and settings it was run with, and its status
(``running``, ``done``, ``not_run`` with the reason)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import write_text

if TYPE_CHECKING:
    from .grid import Cell

RECORD = "cell.json"


def read_record(folder: Path) -> dict[str, Any] | None:
    """The cell's ``cell.json``; an unreadable one (a kill mid-write by an older version) counts as none."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": "unreadable", "key": None, "settings": {}}
    return record if isinstance(record, dict) else {"status": "unreadable", "key": None, "settings": {}}


def write_record(folder: Path, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, default=str)
    write_text(folder / RECORD, text)


def has_run(folder: Path) -> bool:
    return (folder / "results.json").is_file() or any((folder / "checkpoints").glob("*.safetensors"))


def finished(cell: Cell, key: str, source_checkpoint: str | None) -> bool:
    """Whether the cell's folder holds its results under settings ``key`` (and, for an evaluating cell, the same
    source checkpoint)."""
    record = read_record(cell.folder) or {}
    return record.get("status") == "done" and record.get("key") == key and \
        (cell.folder / "results.json").is_file() and record.get("source_checkpoint") == source_checkpoint
