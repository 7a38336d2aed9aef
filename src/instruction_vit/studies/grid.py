"""The grid of cells a spec makes: :class:`Cell` (one run: its config, folder, and the cell it evaluates) and
:func:`cells`, which builds the selected ones with their weights."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..methods import Method
from ..config import Config, ConfigError, load_config
from ..resolve import resolve
from .specs import cell_tree, column_entry, column_rows, column_seeds, evaluated_column, fill_runs, merge_tree


@dataclass(frozen=True)
class Cell:
    column: str
    row: str
    seed: int
    config: Config
    folder: Path
    zero_shot: bool = False
    spec_config: Config | None = None  # the same cell from the spec alone (no command-line overrides or weights)
    source: Cell | None = None  # an ``evaluate`` column's cell: the cell whose checkpoint it evaluates
    method: Method | None = None  # the method model.method names, resolved once with the config

    @property
    def name(self) -> str:
        return f"{self.column}/{self.row}/seed{self.seed}"

    @property
    def runs(self) -> Path:
        """The runs folder the cell's folder is in (``RUNS/SPEC/COLUMN/ROW/seedK``)."""
        return self.folder.parents[3]

    @property
    def source_model(self) -> Path | None:
        """The checkpoint an evaluating cell evaluates (its source's ``best.safetensors``); ``None`` for others."""
        return self.source.folder / "checkpoints" / "best.safetensors" if self.source is not None else None

    @property
    def upstream(self) -> tuple[Path, ...]:
        """The folders of the cells whose output this one reads, so it runs after them: the cell it evaluates, and a
        cell whose checkpoint it starts from (``model.pretrained: "{runs}/SPEC/COLUMN/ROW/seedK/checkpoints/..."``)."""
        found = [self.source.folder] if self.source is not None else []
        pretrained = self.config.model.pretrained
        if pretrained and pretrained not in ("timm", "random"):
            spec_folder = Path(os.path.abspath(self.folder.parents[2]))
            path = Path(os.path.abspath(Path(pretrained).expanduser()))
            if path.is_relative_to(spec_folder):
                parts = path.relative_to(spec_folder).parts
                if len(parts) > 3 and parts[2].startswith("seed"):
                    found.append(self.folder.parents[2] / parts[0] / parts[1] / parts[2])
        return tuple(dict.fromkeys(found))

    @property
    def needs_backbone(self) -> bool:
        """Whether the cell trains a timm backbone (zero-shot and CLIP prompt-learner cells use the CLIP encoder
        alone; an evaluating cell trains nothing)."""
        return not self.zero_shot and self.source is None and self.method.timm_backbone

    @property
    def uses_encoder(self) -> bool:
        return self.zero_shot or self.method.uses_encoder or self.config.prompts.kind != "none"


def _make_cell(spec: dict[str, Any], runs: Path, column: str, row: str, seed: int, overrides: Sequence[str],
               weights: Mapping[str, str]) -> Cell:
    if row not in spec["rows"]:
        raise ConfigError(f"{spec['name']} has no row {row!r}; it has {', '.join(spec['rows'])}")
    row_spec = spec["rows"][row] or {}
    zero_shot = bool(row_spec.get("zero_shot", False))
    source_column = evaluated_column(spec, column)
    source = None
    if source_column is None:
        tree = cell_tree(spec, column, row, seed, overrides)
    else:
        if row not in column_rows(spec, source_column):
            raise ConfigError(f"{spec['name']}/{column} evaluates {source_column}'s models, which has no row {row!r}")
        tree = merge_tree(cell_tree(spec, source_column, row, seed, overrides),
                          column_entry(spec, column).get("config", {}))
        if not zero_shot:  # zero-shot trains nothing: it runs on the target as it is
            source = _make_cell(spec, runs, source_column, row, seed, overrides, weights)
    data = fill_runs(tree, runs)
    resolved = resolve(load_config(None, overrides, base=data))
    cfg = resolved.config
    folder = runs / spec["name"] / column / row / f"seed{seed}"
    cell = Cell(column, row, seed, cfg, folder, zero_shot, resolve(load_config(None, (), base=data)).config, source,
                resolved.method)
    backbone_source = weights.get(cfg.model.backbone)
    if cell.needs_backbone and backbone_source is not None and cfg.model.pretrained == "timm":
        model = dataclasses.replace(cfg.model, pretrained=None if backbone_source == "random" else backbone_source)
        cell = dataclasses.replace(cell, config=dataclasses.replace(cfg, model=model))
    return cell


def cells(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
          overrides: Sequence[str] = (), weights: Mapping[str, str] | None = None) -> Iterator[Cell]:
    """The cells of ``spec`` matching ``select`` (``COLUMN`` or ``COLUMN/ROW``), in spec order (``average``
    columns have none).

    ``weights`` maps backbone names to weights sources; it fills the cells whose spec asks for pretrained weights
    (``model.pretrained: timm``) and leaves explicit files and random init alone. A ``model.pretrained`` override
    is refused when the cells train more than one backbone (one file cannot fit them all)."""
    weights = dict(weights or {})
    want_col, _, want_row = select.partition("/")
    found = []
    for column in (want_col,) if want_col else spec["columns"]:
        if "average" in column_entry(spec, column):
            continue
        for row in (want_row,) if want_row else column_rows(spec, column):
            for seed in seeds or column_seeds(spec, column):
                found.append(_make_cell(spec, runs, column, row, seed, overrides, weights))
    _check_table_wide_weights(found, overrides)
    yield from found


def run_order(found: Sequence[Cell]) -> list[Cell]:
    """``found`` in an order that runs each cell after the cells of ``found`` it reads (:attr:`Cell.upstream`),
    spec order otherwise: by level (0: reads no selected cell; n + 1: reads a cell of level n)."""
    by_folder = {c.folder: c for c in found}
    levels: dict[Path, int] = {}

    def level(cell: Cell, seen: frozenset[Path] = frozenset()) -> int:
        if cell.folder not in levels:
            ups = [by_folder[f] for f in cell.upstream if f in by_folder and f not in seen and f != cell.folder]
            levels[cell.folder] = 1 + max((level(u, seen | {cell.folder}) for u in ups), default=-1)
        return levels[cell.folder]

    return sorted(found, key=level)


def _check_table_wide_weights(found: list[Cell], overrides: Sequence[str]) -> None:
    if not any(o.split("=", 1)[0].strip() == "model.pretrained" for o in overrides):
        return
    backbones = sorted({c.config.model.backbone for c in found if c.needs_backbone})
    if len(backbones) > 1:
        raise ConfigError(
            f"model.pretrained would give one weights file to {len(backbones)} backbones ({', '.join(backbones[:4])}"
            f"{', ...' if len(backbones) > 4 else ''}); give weights per backbone instead, e.g. "
            f"weights.{backbones[0]}=FILE (or --weights MAP.yaml), or select one row")


def check_weights_map(spec: dict[str, Any], runs: Path, weights: Mapping[str, str]) -> None:
    """Every backbone named in ``weights`` must be one that some cell of the spec trains (a misspelt name would
    otherwise leave its cells on timm's default weights)."""
    if not weights:
        return
    trained = {c.config.model.backbone for c in cells(spec, runs, seeds=[1]) if c.needs_backbone}
    unknown = sorted(set(weights) - trained)
    if unknown:
        raise ConfigError(f"weights given for {', '.join(unknown)}, which no cell of {spec['name']} trains; its "
                          f"backbones are {', '.join(sorted(trained))}")
    missing = [f"{name}={source}" for name, source in weights.items()
               if source not in ("timm", "random") and not Path(source).expanduser().is_file()]
    if missing:
        raise ConfigError(f"weights files not found: {', '.join(missing)}; give existing files, 'timm' for timm's own "
                          "sources, or 'random' for random init")
