"""Experiment specs: a table of runs (columns x rows x seeds), each cell an ordinary run config.

A spec (YAML; shipped ones in ``instruction_vit/experiments/``) holds::

    name, description
    seeds: [1, 2, 3]
    base:    {config sections}            # the recipe every cell shares
    columns: {NAME: {config: {...}, metrics: {label: results.json path}, paper: {ROW: number}}}
    rows:    {NAME: {label: ..., config: {...}, by: {KEY: {VALUE: {...}}}, zero_shot: false}}

A cell's config is ``base`` <- column <- row <- the row's ``by`` entry <- ``{train.seed, data.shots_seed}`` <-
command-line overrides. ``by`` gives a row's recipe per value of a resolved key (``by: {data.shots: {1: {train:
{epochs: 50}}, ...}}``: CoOp's epochs per shot count); every value the row meets must be listed. ``{runs}`` in a
string value is replaced by the runs folder (so a cell can start from another cell's checkpoint). Runs go to
``RUNS/SPEC/COLUMN/ROW/seedK``; a cell with ``results.json`` is done and skipped, one with a checkpoint but no
results is resumed.

Two more column kinds:

* ``evaluate: {from: COLUMN}``: no training; each cell evaluates the best checkpoint of the same row and seed of
  ``COLUMN`` on other data, with that data's own class names (cross-data-set transfer,
  :func:`~.transfer_protocols.transfer`). Its ``config`` changes only ``data`` and the keys that build prompts for the new
  names (``prompts.templates``, ``descriptions``, ``per_class``, ``seed``). Such a cell is keyed by its data and the
  source cell's key, runs after its source, and is refused while the source is not done.
* ``average: [COLUMN, ...]``: no cells; the report's per-seed mean over those columns (the peers' "average over
  target data sets").
"""


from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config, read_yaml_mapping

SHIPPED = Path(__file__).resolve().parents[1] / "experiments"


def load_spec(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = SHIPPED / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
        raise ConfigError(f"no experiment spec {name_or_path!r} (shipped: {shipped}; or give a YAML path)")
    spec = read_yaml_mapping(path, "experiment spec")
    for key in ("name", "columns", "rows"):
        if key not in spec:
            raise ConfigError(f"experiment spec {path} has no {key!r}")
    return spec


def split_weights(overrides: Sequence[str], weights_file: str | Path | None = None) -> tuple[list[str], dict[str, str]]:
    """Separate ``weights.BACKBONE=SOURCE`` items from config overrides; ``weights_file`` is a YAML map
    ``{BACKBONE: SOURCE}`` read first. SOURCE is a weights file, ``timm`` (timm's own sources) or ``random``."""
    weights: dict[str, str] = {}
    if weights_file is not None:
        content = read_yaml_mapping(weights_file, "weights map", "a mapping of backbone names to weights sources")
        if not all(isinstance(v, str) for v in content.values()):
            raise ConfigError(f"{weights_file} must map backbone names to weights sources, e.g. "
                              "vit_base_patch16_224: /weights/vit_b16.safetensors")
        weights.update({str(k): v for k, v in content.items()})
    rest = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if key.startswith("weights.") and sep:
            weights[key.removeprefix("weights.")] = value
        else:
            rest.append(item)
    return rest, weights


def merge_tree(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for key, value in (b or {}).items():
        out[key] = merge_tree(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def fill_runs(value: Any, runs: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{runs}", str(runs))
    if isinstance(value, dict):
        return {k: fill_runs(v, runs) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_runs(v, runs) for v in value]
    return value


#: What an ``evaluate`` column may change: the data, and how prompts for the new class names are built.
TARGET_KEYS = {"data": None, "prompts": {"templates", "descriptions", "per_class", "seed"}}


def column_entry(spec: dict[str, Any], column: str) -> dict[str, Any]:
    if column not in spec["columns"]:
        raise ConfigError(f"{spec['name']} has no column {column!r}; it has {', '.join(spec['columns'])}")
    return spec["columns"][column] or {}


def evaluated_column(spec: dict[str, Any], column: str) -> str | None:
    """The column whose checkpoints an ``evaluate`` column reads (``None`` for a training column)."""
    col = column_entry(spec, column)
    if "evaluate" not in col:
        return None
    ev = col["evaluate"]
    if not isinstance(ev, dict) or set(ev) != {"from"}:
        raise ConfigError(f"{spec['name']}/{column}: write evaluate as {{from: COLUMN}} (the column whose "
                          f"checkpoints it evaluates), not {ev!r}")
    source = ev["from"]
    if source not in spec["columns"] or "evaluate" in (spec["columns"][source] or {}) \
            or "average" in (spec["columns"][source] or {}):
        trained = [c for c, v in spec["columns"].items() if not {"evaluate", "average"} & set(v or {})]
        raise ConfigError(f"{spec['name']}/{column} evaluates column {source!r}, which is not a training column of "
                          f"the spec ({', '.join(trained)})")
    for section, value in (col.get("config") or {}).items():
        allowed = TARGET_KEYS.get(section, set())
        bad = [section] if section not in TARGET_KEYS else \
            [f"{section}.{k}" for k in (value or {}) if allowed is not None and k not in allowed]
        if bad:
            raise ConfigError(f"{spec['name']}/{column} evaluates {source}'s models without training: its config may "
                              f"change data.* and prompts.{{{', '.join(sorted(TARGET_KEYS['prompts']))}}}, not "
                              f"{', '.join(bad)} (the model comes from the checkpoint)")
    return source


def column_rows(spec: dict[str, Any], column: str) -> list[str]:
    col = column_entry(spec, column)
    source = evaluated_column(spec, column)
    return list(col.get("rows", column_entry(spec, source).get("rows", spec["rows"]) if source else spec["rows"]))


def column_seeds(spec: dict[str, Any], column: str) -> list[int]:
    col = column_entry(spec, column)
    source = evaluated_column(spec, column)
    default = column_entry(spec, source).get("seeds", spec.get("seeds", [1])) if source else spec.get("seeds", [1])
    return list(col.get("seeds", default))


def _lookup_key(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _by(spec: dict[str, Any], row: str, tree: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The row's ``by`` entries for the values ``tree`` resolves to with the command-line ``overrides`` (a value not
    listed is an error): ``data.shots=1`` on the command line gets the 1-shot recipe."""
    for key, table in ((spec["rows"][row] or {}).get("by") or {}).items():
        value = _lookup_key(load_config(None, overrides, base=tree).to_dict(), key)  # the defaults count too
        entry = next((v for k, v in (table or {}).items() if k == value or str(k) == str(value)), None)
        if entry is None:
            raise ConfigError(f"{spec['name']} row {row!r} sets its recipe by {key}, but lists no entry for {value!r} "
                              f"(it has {', '.join(map(str, table or {}))})")
        tree = merge_tree(tree, entry)
    return tree


def cell_tree(spec: dict[str, Any], column: str, row: str, seed: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A training cell's config as the spec writes it: base <- column <- row <- by <- seeds."""
    tree = merge_tree(merge_tree(spec.get("base", {}), column_entry(spec, column).get("config", {})),
                  (spec["rows"][row] or {}).get("config", {}))
    return merge_tree(_by(spec, row, tree, overrides), {"train": {"seed": seed}, "data": {"shots_seed": seed}})


def averaged_columns(spec: dict[str, Any], column: str) -> list[str]:
    of = column_entry(spec, column)["average"]
    if not isinstance(of, list) or not of or any(c not in spec["columns"] or "average" in (spec["columns"][c] or {})
                                                for c in of):
        raise ConfigError(f"{spec['name']}/{column}: average takes a list of the spec's other columns, not {of!r}")
    return of
