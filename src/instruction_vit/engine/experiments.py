"""Experiment specs: a table of runs (columns x rows x seeds), each cell an ordinary run config.

A spec (YAML; shipped ones in ``instruction_vit/experiments/``) holds::

    name, description
    seeds: [1, 2, 3]
    base:    {config sections}            # the recipe every cell shares
    columns: {NAME: {config: {...}, metrics: {label: results.json path}, paper: {ROW: number}}}
    rows:    {NAME: {label: ..., config: {...}, zero_shot: false}}

A cell's config is ``base`` <- column <- row <- ``{train.seed, data.shots_seed}`` <- command-line overrides;
``{runs}`` in a string value is replaced by the runs folder (so a cell can start from another cell's
checkpoint). Runs go to ``RUNS/SPEC/COLUMN/ROW/seedK``; a cell with ``results.json`` is done and skipped, one
with a checkpoint but no results is resumed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, load_config

SHIPPED = Path(__file__).resolve().parents[1] / "experiments"


@dataclass(frozen=True)
class Cell:
    column: str
    row: str
    seed: int
    config: Config
    folder: Path
    zero_shot: bool = False

    @property
    def name(self) -> str:
        return f"{self.column}/{self.row}/seed{self.seed}"


def load_spec(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = SHIPPED / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
        raise ConfigError(f"no experiment spec {name_or_path!r} (shipped: {shipped}; or give a YAML path)")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("name", "columns", "rows"):
        if key not in spec:
            raise ConfigError(f"experiment spec {path} has no {key!r}")
    return spec


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for key, value in (b or {}).items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _fill(value: Any, runs: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{runs}", str(runs))
    if isinstance(value, dict):
        return {k: _fill(v, runs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, runs) for v in value]
    return value


def cells(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
          overrides: Sequence[str] = ()) -> Iterator[Cell]:
    """The cells of ``spec`` matching ``select`` (``COLUMN`` or ``COLUMN/ROW``), in spec order."""
    want_col, _, want_row = select.partition("/")
    for column in (want_col,) if want_col else spec["columns"]:
        if column not in spec["columns"]:
            raise ConfigError(f"{spec['name']} has no column {column!r}; it has {', '.join(spec['columns'])}")
        col = spec["columns"][column] or {}
        rows = col.get("rows", list(spec["rows"]))
        for row in (want_row,) if want_row else rows:
            if row not in spec["rows"]:
                raise ConfigError(f"{spec['name']} has no row {row!r}; it has {', '.join(spec['rows'])}")
            row_spec = spec["rows"][row] or {}
            for seed in seeds or col.get("seeds", spec.get("seeds", [1])):
                data = _merge(_merge(_merge(spec.get("base", {}), col.get("config", {})), row_spec.get("config", {})),
                              {"train": {"seed": seed}, "data": {"shots_seed": seed}})
                cfg = load_config(None, overrides, base=_fill(data, runs))
                folder = runs / spec["name"] / column / row / f"seed{seed}"
                yield Cell(column, row, seed, cfg, folder, bool(row_spec.get("zero_shot", False)))


def run_cells(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
              overrides: Sequence[str] = (), force: bool = False, log: Callable[[str], None] = print,
              progress=None) -> list[Cell]:
    """Run every selected cell that has no results yet; returns the cells run."""
    from .protocols import zero_shot
    from .train import train

    done = []
    for cell in cells(spec, runs, select, seeds, overrides):
        results = cell.folder / "results.json"
        if results.is_file() and not force:
            log(f"{cell.name}: done ({results})")
            continue
        log(f"== {spec['name']}/{cell.name} ==")
        if cell.zero_shot:
            zero_shot(cell.config, cell.folder, progress)
        else:
            resume = (cell.folder / "checkpoints" / "last.safetensors").is_file() and not force
            train(cell.config, cell.folder, resume=resume, force=not resume, log=log, progress=progress)
        done.append(cell)
    return done


def _lookup(results: dict[str, Any], path: str) -> float | None:
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def collect(spec: dict[str, Any], runs: Path) -> list[dict[str, Any]]:
    """One record per (column, metric, row): the values over seeds, and the paper's number if any."""
    records = []
    for column, col in spec["columns"].items():
        col = col or {}
        metrics = col.get("metrics", {"top-1": "top1"})
        for label, path in metrics.items():
            for row in col.get("rows", list(spec["rows"])):
                values = []
                for seed_dir in sorted((runs / spec["name"] / column / row).glob("seed*")):
                    f = seed_dir / "results.json"
                    if f.is_file():
                        value = _lookup(json.loads(f.read_text(encoding="utf-8")), path)
                        if value is not None:
                            values.append(value)
                records.append({"column": column, "metric": label, "row": row,
                                "label": (spec["rows"][row] or {}).get("label", row), "values": values,
                                "paper": (col.get("paper") or {}).get(row) if label == next(iter(metrics)) else None})
    return records
