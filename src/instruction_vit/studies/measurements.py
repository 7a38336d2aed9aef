"""What the finished cells measured, per (column, metric, row) over seeds, for the report (:func:`collect`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cell_record import read_record
from .specs import averaged_columns, column_rows


def _lookup(results: dict[str, Any], path: str) -> float | None:
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def _seed_results(spec: dict[str, Any], runs: Path, column: str, row: str, path: str
                  ) -> tuple[dict[int, float], list[str], list[str]]:
    """``{seed: value}`` of the finished seeds of a cell row, how their settings departed from the spec, and why
    seeds were not run."""
    values: dict[int, float] = {}
    changes: list[str] = []
    not_run: list[str] = []
    for seed_dir in sorted((runs / spec["name"] / column / row).glob("seed*")):
        record = read_record(seed_dir) or {}
        if record.get("status") == "not_run":
            not_run.append(record.get("reason", "not run"))
            continue
        if record and record.get("status") != "done":  # running, killed or unreadable: no result
            continue
        f = seed_dir / "results.json"
        if f.is_file() and seed_dir.name.removeprefix("seed").isdigit():
            value = _lookup(json.loads(f.read_text(encoding="utf-8")), path)
            if value is not None:
                values[int(seed_dir.name.removeprefix("seed"))] = value
                changes += [c for c in record.get("spec_changes", []) if c not in changes]
                if not record:
                    changes.append("settings not recorded (run by an older version)")
    return values, changes, not_run


def collect(spec: dict[str, Any], runs: Path) -> list[dict[str, Any]]:
    """One record per (column, metric, row): the values over seeds, the paper's number if any, how the runs'
    settings departed from the spec (``changes``), and why seeds were not run (``not_run``). An ``average``
    column's values are per-seed means over its columns (a seed counts when every one of them has it)."""
    records = []
    for column, col in spec["columns"].items():
        col = col or {}
        averaged = averaged_columns(spec, column) if "average" in col else None
        metrics = col.get("metrics", {"top-1": "top1"})
        rows = col.get("rows") or (list(dict.fromkeys(r for c in averaged for r in column_rows(spec, c)))
                                   if averaged else column_rows(spec, column))
        for label, path in metrics.items():
            for row in rows:
                if averaged:
                    parts = [_seed_results(spec, runs, c, row, path) if row in column_rows(spec, c) else ({}, [], [])
                             for c in averaged]
                    common = set.intersection(*(set(v) for v, _, _ in parts))
                    per_seed = {seed: sum(v[seed] for v, _, _ in parts) / len(parts) for seed in sorted(common)}
                    changes = list(dict.fromkeys(c for _, ch, _ in parts for c in ch))
                    not_run = [n for _, _, nr in parts for n in nr]  # a plain ViT's targets: said so here too
                else:
                    per_seed, changes, not_run = _seed_results(spec, runs, column, row, path)
                records.append({"column": column, "metric": label, "row": row,
                                "label": (spec["rows"][row] or {}).get("label", row), "values": list(per_seed.values()),
                                "paper": (col.get("paper") or {}).get(row) if label == next(iter(metrics)) else None,
                                "changes": changes, "not_run": sorted(set(not_run))})
    return records
