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
  :func:`~.protocols.transfer`). Its ``config`` changes only ``data`` and the keys that build prompts for the new
  names (``prompts.templates``, ``descriptions``, ``per_class``, ``seed``). Such a cell is keyed by its data and the
  source cell's key, runs after its source, and is refused while the source is not done.
* ``average: [COLUMN, ...]``: no cells; the report's per-seed mean over those columns (the peers' "average over
  target data sets").
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ..classifiers import ClassifierKind
from ..resolve import resolve
from ..config import Config, ConfigError, load_config, read_yaml_mapping
from ..data import split_identity
from ..errors import RunFolderError
from ..files import file_sha256, write_text
from ..hub_source import MODEL_FILE, resolve_model_source
from ..hub_source import bank_stem as hub_bank_stem
from ..prompts.encoders import parse_spec, weights_id
from ..training.run_lock import RunFolderInUseError, RunLock

logger = logging.getLogger(__name__)
SHIPPED = Path(__file__).resolve().parents[1] / "experiments"


#: Keys that say where things are or how a run is executed, not what it computes: they never make a cell "differ
#: from the spec" by themselves (a change of weights or encoder is judged by what they are, see spec_changes).
SITE_KEYS = ("data.root", "data.split_file", "data.num_workers", "data.store_dir", "prompts.cache_dir",
             "prompts.bank_file", "train.device", "train.log_every", "train.tensorboard", "train.compile")
#: Keys left out of the cell's key: they cannot change a result, or they are paths whose content is in the key
#: instead (so ``--runs runs`` and ``--runs /abs/runs``, or a moved weights file, give the same key).
UNKEYED = ("data.num_workers", "data.store_dir", "prompts.cache_dir", "train.log_every", "train.tensorboard",
           "data.root", "data.split_file", "model.pretrained", "prompts.bank_file", "prompts.encoder",
           "prompts.image_encoder", "prompts.templates", "prompts.descriptions")
RECORD = "cell.json"


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
    kind: ClassifierKind | None = None  # the classifier kind model.method names, resolved once with the config

    @property
    def name(self) -> str:
        return f"{self.column}/{self.row}/seed{self.seed}"

    @property
    def needs_backbone(self) -> bool:
        """Whether the cell trains a timm backbone (zero-shot and CLIP prompt-learner cells use the CLIP encoder
        alone; an evaluating cell trains nothing)."""
        return not self.zero_shot and self.source is None and self.kind.timm_backbone

    @property
    def uses_encoder(self) -> bool:
        return self.zero_shot or self.kind.uses_encoder or self.config.prompts.kind != "none"


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


#: What an ``evaluate`` column may change: the data, and how prompts for the new class names are built.
TARGET_KEYS = {"data": None, "prompts": {"templates", "descriptions", "per_class", "seed"}}


def _column(spec: dict[str, Any], column: str) -> dict[str, Any]:
    if column not in spec["columns"]:
        raise ConfigError(f"{spec['name']} has no column {column!r}; it has {', '.join(spec['columns'])}")
    return spec["columns"][column] or {}


def evaluated_column(spec: dict[str, Any], column: str) -> str | None:
    """The column whose checkpoints an ``evaluate`` column reads (``None`` for a training column)."""
    col = _column(spec, column)
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
    col = _column(spec, column)
    source = evaluated_column(spec, column)
    return list(col.get("rows", _column(spec, source).get("rows", spec["rows"]) if source else spec["rows"]))


def column_seeds(spec: dict[str, Any], column: str) -> list[int]:
    col = _column(spec, column)
    source = evaluated_column(spec, column)
    default = _column(spec, source).get("seeds", spec.get("seeds", [1])) if source else spec.get("seeds", [1])
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
        tree = _merge(tree, entry)
    return tree


def _tree(spec: dict[str, Any], column: str, row: str, seed: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A training cell's config as the spec writes it: base <- column <- row <- by <- seeds."""
    tree = _merge(_merge(spec.get("base", {}), _column(spec, column).get("config", {})),
                  (spec["rows"][row] or {}).get("config", {}))
    return _merge(_by(spec, row, tree, overrides), {"train": {"seed": seed}, "data": {"shots_seed": seed}})


def _make_cell(spec: dict[str, Any], runs: Path, column: str, row: str, seed: int, overrides: Sequence[str],
               weights: Mapping[str, str]) -> Cell:
    if row not in spec["rows"]:
        raise ConfigError(f"{spec['name']} has no row {row!r}; it has {', '.join(spec['rows'])}")
    row_spec = spec["rows"][row] or {}
    zero_shot = bool(row_spec.get("zero_shot", False))
    source_column = evaluated_column(spec, column)
    source = None
    if source_column is None:
        tree = _tree(spec, column, row, seed, overrides)
    else:
        if row not in column_rows(spec, source_column):
            raise ConfigError(f"{spec['name']}/{column} evaluates {source_column}'s models, which has no row {row!r}")
        tree = _merge(_tree(spec, source_column, row, seed, overrides), _column(spec, column).get("config", {}))
        if not zero_shot:  # zero-shot trains nothing: it runs on the target as it is
            source = _make_cell(spec, runs, source_column, row, seed, overrides, weights)
    data = _fill(tree, runs)
    resolved = resolve(load_config(None, overrides, base=data))
    cfg = resolved.config
    folder = runs / spec["name"] / column / row / f"seed{seed}"
    cell = Cell(column, row, seed, cfg, folder, zero_shot, resolve(load_config(None, (), base=data)).config, source,
                resolved.kind)
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
        if "average" in _column(spec, column):
            continue
        for row in (want_row,) if want_row else column_rows(spec, column):
            for seed in seeds or column_seeds(spec, column):
                found.append(_make_cell(spec, runs, column, row, seed, overrides, weights))
    _check_table_wide_weights(found, overrides)
    yield from found


def _check_table_wide_weights(found: list[Cell], overrides: Sequence[str]) -> None:
    if not any(o.split("=", 1)[0].strip() == "model.pretrained" for o in overrides):
        return
    backbones = sorted({c.config.model.backbone for c in found if c.needs_backbone})
    if len(backbones) > 1:
        raise ConfigError(
            f"model.pretrained would give one weights file to {len(backbones)} backbones ({', '.join(backbones[:4])}"
            f"{', ...' if len(backbones) > 4 else ''}); give weights per backbone instead, e.g. "
            f"weights.{backbones[0]}=FILE (or --weights MAP.yaml), or select one row")


# -- what a cell computes: its key -----------------------------------------------------------------------------
def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name.count(".") == 0:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


class Identities:
    """Content identities of weights files and encoders (files are hashed once per process; encoder ids are
    remembered per spec)."""

    def __init__(self):
        self._seen: dict[tuple, str] = {}

    def _memo(self, key: tuple, make: Callable[[], str]) -> str:
        if key not in self._seen:
            self._seen[key] = make()
        return self._seen[key]

    def file(self, source: str | None) -> str:
        """``random-init``, ``timm`` (timm's own sources), ``sha256:...`` of a file (of a model folder's or
        ``hf-hub:`` repo's ``model.safetensors``), or ``missing:PATH``."""
        if source is None:
            return "random-init"
        if source == "timm":
            return "timm"
        folder = self._memo(("folder", source), lambda: _model_folder(source))
        path = Path(folder) / MODEL_FILE if folder else Path(source).expanduser()
        return f"sha256:{file_sha256(path)}" if path.is_file() else f"missing:{path.resolve()}"

    def encoder(self, spec: str | None) -> dict[str, str] | None:
        """The model an encoder spec names and the content id of its weights (with the activation for CLIP)."""
        if spec is None:
            return None
        return {"model": _encoder_model(spec), "weights": self._memo(("encoder", spec), lambda: weights_id(spec))}

    def text_file(self, value: Any) -> Any:
        """A template set or descriptions file by content; a named set by its name; templates or descriptions given
        in the config as they are."""
        if value is None or not isinstance(value, str):
            return value
        path = Path(value).expanduser()
        return f"sha256:{file_sha256(path)}" if path.is_file() else value


def cell_settings(cell: Cell, ids: Identities) -> dict[str, Any]:
    """Everything a cell's numbers depend on: its resolved config (less :data:`UNKEYED`), the identity of its
    splits, the content ids of its backbone weights, prompt encoders, template and description files, and for an
    evaluating cell the key of the cell whose model it evaluates."""
    c = cell.config
    config = {k: v for k, v in _flat(c.to_dict()).items() if k not in UNKEYED}
    settings: dict[str, Any] = {"config": config, "split": split_identity(c.data), "zero_shot": cell.zero_shot}
    if cell.needs_backbone:
        settings["backbone_weights"] = ids.file(c.model.pretrained)
    if cell.uses_encoder:
        settings["encoder"] = ids.encoder(c.prompts.encoder)
        settings["image_encoder"] = ids.encoder(c.prompts.image_encoder)
        settings["templates"] = ids.text_file(c.prompts.templates)
        settings["descriptions"] = ids.text_file(c.prompts.descriptions)
    if c.prompts.bank_file:  # a bank file pair, or a model folder's / hf-hub repo's bank
        stem = Path(hub_bank_stem(c.prompts.bank_file)) if _model_folder(c.prompts.bank_file) else \
            bank_stem(c.prompts.bank_file)
        settings["bank_file"] = ids.file(str(stem.with_suffix(".safetensors")))
    if cell.source is not None:  # what it evaluates: that cell's model, as keyed by that cell's settings
        settings["source"] = {"cell": cell.source.name, "key": settings_key(cell_settings(cell.source, ids))}
    return settings


def settings_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]


def spec_changes(cell: Cell, ids: Identities | None = None) -> list[str]:
    """How the cell departs from the spec (``key: spec -> now``). Paths and devices aside, with two judged by
    what they are: backbone weights change unless the spec asks for pretrained weights (``timm``) and a file gives
    them (random init, another tag, or another file than the spec names is a change); an encoder changes when its
    model, its tag or (for CLIP) its activation differs from the spec's, not when its weights lie elsewhere."""
    if cell.spec_config is None:
        return []
    ids = ids or Identities()
    now, spec = _flat(cell.config.to_dict()), _flat(cell.spec_config.to_dict())
    changes = []
    for key in now:
        a, b = spec.get(key), now[key]
        if key in SITE_KEYS or a == b:
            continue
        if key == "model.pretrained" and (a == "timm" and b is not None and b != "random"):
            continue
        if key in ("prompts.encoder", "prompts.image_encoder") and _same_encoder(a, b, ids):
            continue
        changes.append(f"{key}: {a!r} -> {b!r}")
    return changes


def _encoder_model(spec: Any) -> Any:
    """The model an encoder spec names: ``open_clip:ViT-B-16@openai`` and ``open_clip:ViT-B-16-quickgelu@/w/x.pt``
    both name ``open_clip:ViT-B-16`` (the activation is compared through the weights id)."""
    if not isinstance(spec, str):
        return spec
    name, arg = parse_spec(spec)
    return f"{name}:{arg.partition('@')[0].removesuffix('-quickgelu')}" if arg else name


def _same_encoder(a: Any, b: Any, ids: Identities) -> bool:
    """The same model, and either the same tag or a weights file whose activation matches the spec's tag."""
    if not (isinstance(a, str) and isinstance(b, str)) or _encoder_model(a) != _encoder_model(b):
        return False
    tag_a, tag_b = (parse_spec(x)[1].partition("@")[2] for x in (a, b))
    file_a, file_b = (any(sep in t for sep in "/\\.") for t in (tag_a, tag_b))
    if not file_a and not file_b:
        return tag_a == tag_b
    try:
        act = [ids.encoder(x)["weights"].rpartition("+")[2] for x in (a, b)]
    except (OSError, ValueError, RuntimeError):
        return False
    return act[0] == act[1]


def _model_folder(source: str) -> str:
    """The local folder a model folder or ``hf-hub:`` source names ("" for any other source)."""
    found = resolve_model_source(source)
    return str(found.path) if found is not None else ""


def bank_stem(path: str | Path) -> Path:
    """``banks/pets``, ``banks/pets.json`` and ``banks/pets.safetensors`` name one bank (as PromptBank.load reads)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


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


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, default=str)
    write_text(folder / RECORD, text)


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = _flat_all(old), _flat_all(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _flat_all(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "config" and not prefix:
            out.update({k: v for k, v in value.items()})
        else:
            out.update(_flat_all(value, f"{prefix}{key}."))
    return out


def _has_run(folder: Path) -> bool:
    return (folder / "results.json").is_file() or any((folder / "checkpoints").glob("*.safetensors"))


def stale_cells(found: Sequence[Cell], ids: Identities) -> list[tuple[Cell, list[str]]]:
    """Cells whose folder holds a run (finished or not) made under other settings, with what changed."""
    stale = []
    for cell in found:
        if not _has_run(cell.folder):
            continue
        record = read_record(cell.folder)
        settings = cell_settings(cell, ids)
        if record is None:
            stale.append((cell, ["no record of the settings it was run with (made by an older version)"]))
        elif record.get("status") == "unreadable":
            stale.append((cell, [f"its record {cell.folder / RECORD} is unreadable"]))
        elif record.get("key") != settings_key(settings):
            stale.append((cell, _settings_diff(record.get("settings", {}), settings)))
    return stale


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


def _refuse_stale(stale: list[tuple[Cell, list[str]]], runs: Path) -> None:
    cell, changes = stale[0]
    more = f" (and {len(stale) - 1} more cell(s))" if len(stale) > 1 else ""
    shown = "; ".join(changes[:3]) + (f"; ... {len(changes) - 3} more" if len(changes) > 3 else "")
    raise ConfigError(f"{cell.folder} was run under other settings{more}: {shown}. Rerun it with these settings "
                      f"with --force, or keep both with a new runs folder (--runs {runs}-new)")


def _source_state(cell: Cell, ids: Identities) -> tuple[str, str]:
    """(state, why) of the cell an evaluating cell reads: ``done`` (finished under its current settings, its best
    checkpoint there), ``not_run`` (recorded as not run: why), or ``missing`` (not run yet, running, or run under
    other settings)."""
    source = cell.source
    record = read_record(source.folder) or {}
    if record.get("status") == "not_run":
        return "not_run", record.get("reason", "not run")
    if record.get("status") != "done" or not (source.folder / "results.json").is_file():
        return "missing", "not run yet" if not record else f"its status is {record.get('status')!r}"
    if record.get("key") != settings_key(cell_settings(source, ids)):
        return "missing", "it was run under other settings than the spec's now"
    if not (source.folder / "checkpoints" / "best.safetensors").is_file():
        return "missing", f"its checkpoint {source.folder / 'checkpoints' / 'best.safetensors'} is gone"
    return "done", ""


def _check_sources(spec: dict[str, Any], found: Sequence[Cell], ids: Identities) -> None:
    """Every evaluating cell's source is done or is run in this invocation (before it); otherwise nothing runs."""
    to_run = {c.folder for c in found if c.source is None}
    for cell in found:
        if cell.source is None or cell.source.folder in to_run:
            continue
        state, why = _source_state(cell, ids)
        if state == "missing":
            raise RunFolderError(
                f"{spec['name']}/{cell.name} evaluates the model of {spec['name']}/{cell.source.name}, which is not "
                f"done ({why}): run `ivit reproduce {spec['name']}/{cell.source.column}` first (or select both)")


def _source_checkpoint(cell: Cell) -> Path:
    return cell.source.folder / "checkpoints" / "best.safetensors"


def run_cells(spec: dict[str, Any], runs: Path, select: str = "", seeds: Sequence[int] | None = None,
              overrides: Sequence[str] = (), force: bool = False,
              weights: Mapping[str, str] | None = None, keep_last: bool = False) -> list[Cell]:
    """Run every selected cell that has no results under its current settings; returns the cells run.

    A cell is keyed by :func:`cell_settings`; a finished or interrupted cell whose key differs is refused (or, with
    ``force``, rerun from scratch). A cell whose backbone weights cannot be had is recorded as not run and the
    others go on. Finished cells keep only ``best.safetensors`` unless ``keep_last``. Evaluating cells
    (``evaluate`` columns) run after the training cells; one whose source is not done and not selected is refused
    before anything runs, one whose source was not run is recorded as not run, and one is rerun when its source's
    checkpoint changed.

    A cell's folder is a run folder: the cell holds its lock (:mod:`.run_lock`) while it is looked at and run. A
    cell held by another command (a second ``ivit reproduce`` on the same runs folder) is skipped with a line naming
    the holder, and so are the evaluating cells that read it; the others go on, then a :class:`CellsInUseError`
    (a RunFolderError; ``.done`` holds the cells run) says which were skipped."""
    ids = Identities()
    check_weights_map(spec, runs, weights or {})
    found = sorted(cells(spec, runs, select, seeds, overrides, weights), key=lambda c: c.source is not None)
    if not force and (stale := stale_cells(found, ids)):
        _refuse_stale(stale, runs)
    _check_sources(spec, found, ids)
    done: list[Cell] = []
    skipped: list[tuple[Cell, str]] = []
    held: set[Path] = set()  # folders another command holds
    for cell in found:
        settings = cell_settings(cell, ids)  # again: an earlier cell may have made the file this one starts from
        key = settings_key(settings)
        if cell.source is None and not force and _finished(cell, key, None):
            logger.info(f"{cell.name}: done ({cell.folder / 'results.json'})")
            continue
        if cell.source is not None and cell.source.folder in held:
            why = f"its source {cell.source.name} is in use by another command"
            logger.warning(f"{cell.name}: {why}; skipped")
            skipped.append((cell, why))
            continue
        try:
            with _cell_lock(cell):
                if _run_cell(spec, runs, cell, settings, ids, force, keep_last):
                    done.append(cell)
        except RunFolderInUseError as err:
            if err.folder != cell.folder:  # a folder the cell reads, not the cell's own
                raise
            holder = err.holder.describe() if err.holder.readable else f"a lock that cannot be read ({err})"
            logger.warning(f"{cell.name}: held by {holder}; skipped")
            skipped.append((cell, f"held by {holder}"))
            held.add(cell.folder)
    if skipped:
        raise CellsInUseError(done, skipped)
    return done


@contextlib.contextmanager
def _cell_lock(cell: Cell) -> Iterator[None]:
    """The cell's folder locked for the block (rank 0 holding it for all under torchrun, as ``train`` does)."""
    from ..training.distributed import init_world
    from ..training.loop import hold_run_folder

    world, dist_device = init_world(cell.config.train.device)  # a world of one outside torchrun
    with hold_run_folder(cell.folder, world, dist_device):
        yield


class CellsInUseError(RunFolderError):
    """Cells skipped because another command holds their folders; the others ran (``done``)."""

    def __init__(self, done: list[Cell], skipped: list[tuple[Cell, str]]):
        self.done, self.skipped = done, skipped
        first, why = skipped[0]
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        super().__init__(f"ran {len(done)} cell(s); skipped {len(skipped)} in use by another command: {first.name}, "
                         f"{why}{more}. Run the same command again once they finish, to do what is left")


def _finished(cell: Cell, key: str, source_checkpoint: str | None) -> bool:
    """Whether the cell's folder holds its results under settings ``key`` (and, for an evaluating cell, the same
    source checkpoint)."""
    record = read_record(cell.folder) or {}
    return record.get("status") == "done" and record.get("key") == key and \
        (cell.folder / "results.json").is_file() and record.get("source_checkpoint") == source_checkpoint


def _run_cell(spec: dict[str, Any], runs: Path, cell: Cell, settings: dict[str, Any], ids: Identities, force: bool,
              keep_last: bool) -> bool:
    """Run one cell with ``settings`` (:func:`cell_settings`) whose folder's lock the caller holds (done cells are
    left, cells that cannot run recorded as not run); returns whether it ran."""
    from ..errors import WeightsUnavailableError
    from ..artifacts.new_classes import FixedClassesError
    from ..evaluation.protocols import transfer, zero_shot
    from ..training.loop import train

    key = settings_key(settings)
    record = read_record(cell.folder) or {}
    results = cell.folder / "results.json"
    base_record = {"key": key, "settings": settings, "spec_changes": spec_changes(cell, ids), "cell": cell.name}
    if cell.source is not None:
        state, why = _source_state(cell, ids)
        if state != "done":
            reason = f"its source {cell.source.name} was not run: {why}" if state == "not_run" else \
                f"its source {cell.source.name} is not done: {why}"
            logger.warning(f"{cell.name}: not run: {reason}")
            _write_record(cell.folder, {**base_record, "status": "not_run", "reason": reason})
            return False
        base_record["source_checkpoint"] = f"sha256:{file_sha256(_source_checkpoint(cell))}"
    if not force and _finished(cell, key, base_record.get("source_checkpoint")):
        logger.info(f"{cell.name}: done ({results})")
        return False
    if not force and record.get("key") != key and _has_run(cell.folder):
        _refuse_stale([(cell, _settings_diff(record.get("settings", {}), settings))], runs)
    logger.info(f"== {spec['name']}/{cell.name} ==")
    resume = (cell.folder / "checkpoints" / "last.safetensors").is_file() and not force
    results.unlink(missing_ok=True)  # whatever happens next, no earlier result stands for this run
    _write_record(cell.folder, {**base_record, "status": "running"})
    try:
        if cell.zero_shot:
            zero_shot(cell.config, cell.folder)
        elif cell.source is not None:
            source_results = json.loads((cell.source.folder / "results.json").read_text(encoding="utf-8"))
            transfer(cell.config, _source_checkpoint(cell), cell.folder, {
                "cell": f"{spec['name']}/{cell.source.name}", "dataset": cell.source.config.data.dataset,
                "top1": source_results.get("top1")})
        else:
            train(cell.config, cell.folder, resume=resume, force=not resume)
    except FixedClassesError:  # a plain classifier's cell in a transfer column: said so, not a number
        reason = "a plain classifier (no prompts, a head fixed to its training classes) cannot read new class names"
        logger.warning(f"{cell.name}: not run: {reason}")
        _write_record(cell.folder, {**base_record, "status": "not_run", "reason": reason})
        return False
    except WeightsUnavailableError as err:
        backbone = cell.config.model.backbone
        reason = f"no weights for {backbone}" if cell.needs_backbone and backbone in str(err) else \
            f"no weights for the encoder {cell.config.prompts.encoder}"
        logger.warning(f"{cell.name}: not run: {reason} ({err})")
        _write_record(cell.folder, {**base_record, "status": "not_run", "reason": reason})
        return False
    if not keep_last:
        (cell.folder / "checkpoints" / "last.safetensors").unlink(missing_ok=True)
    _write_record(cell.folder, {**base_record, "status": "done"})
    return True


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


def _average_columns(spec: dict[str, Any], column: str) -> list[str]:
    of = _column(spec, column)["average"]
    if not isinstance(of, list) or not of or any(c not in spec["columns"] or "average" in (spec["columns"][c] or {})
                                                for c in of):
        raise ConfigError(f"{spec['name']}/{column}: average takes a list of the spec's other columns, not {of!r}")
    return of


def collect(spec: dict[str, Any], runs: Path) -> list[dict[str, Any]]:
    """One record per (column, metric, row): the values over seeds, the paper's number if any, how the runs'
    settings departed from the spec (``changes``), and why seeds were not run (``not_run``). An ``average``
    column's values are per-seed means over its columns (a seed counts when every one of them has it)."""
    records = []
    for column, col in spec["columns"].items():
        col = col or {}
        averaged = _average_columns(spec, column) if "average" in col else None
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
