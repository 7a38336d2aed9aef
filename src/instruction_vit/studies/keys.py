"""What a cell computes, as a key: its settings (:func:`cell_settings`: the config less paths, with the content
ids of weights, encoders and text files), the key of those settings, how a cell departs from its spec, and which
cells were run under other settings than they have now (stale)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data import split_identity
from ..files import file_sha256
from ..hub_source import MODEL_FILE, resolve_model_source
from ..hub_source import bank_in_source
from ..prompts.bank_files import bank_pair_stem
from ..prompts.encoders import parse_spec, weights_id
from .cell_record import RECORD, has_run, read_record
from .grid import Cell


#: Keys that say where things are or how a run is executed, not what it computes: they never make a cell "differ
#: from the spec" by themselves (a change of weights or encoder is judged by what they are, see spec_changes).
SITE_KEYS = ("data.root", "data.split_file", "data.num_workers", "data.store_dir", "prompts.cache_dir",
             "prompts.bank_file", "train.device", "train.log_every", "train.tensorboard", "train.compile")
#: Keys left out of the cell's key: they cannot change a result, or they are paths whose content is in the key
#: instead (so ``--runs runs`` and ``--runs /abs/runs``, or a moved weights file, give the same key).
UNKEYED = ("data.num_workers", "data.store_dir", "prompts.cache_dir", "train.log_every", "train.tensorboard",
           "data.root", "data.split_file", "model.pretrained", "prompts.bank_file", "prompts.encoder",
           "prompts.image_encoder", "prompts.templates", "prompts.descriptions")



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
    config = {k: v for k, v in c.flat().items() if k not in UNKEYED}
    settings: dict[str, Any] = {"config": config, "split": split_identity(c.data), "zero_shot": cell.zero_shot}
    if cell.needs_backbone:
        settings["backbone_weights"] = ids.file(c.model.pretrained)
    if cell.uses_encoder:
        settings["encoder"] = ids.encoder(c.prompts.encoder)
        settings["image_encoder"] = ids.encoder(c.prompts.image_encoder)
        settings["templates"] = ids.text_file(c.prompts.templates)
        settings["descriptions"] = ids.text_file(c.prompts.descriptions)
    if c.prompts.bank_file:  # a bank file pair, or a model folder's / hf-hub repo's bank
        stem = Path(bank_in_source(c.prompts.bank_file)) if _model_folder(c.prompts.bank_file) else \
            bank_pair_stem(c.prompts.bank_file)
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
    now, spec = cell.config.flat(), cell.spec_config.flat()
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



def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = _flat_record(old), _flat_record(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _flat_record(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "config" and not prefix:
            out.update({k: v for k, v in value.items()})
        else:
            out.update(_flat_record(value, f"{prefix}{key}."))
    return out


def stale_cells(found: Sequence[Cell], ids: Identities) -> list[tuple[Cell, list[str]]]:
    """Cells whose folder holds a run (finished or not) made under other settings, with what changed."""
    stale = []
    for cell in found:
        if not has_run(cell.folder):
            continue
        record = read_record(cell.folder)
        settings = cell_settings(cell, ids)
        if record is None:
            stale.append((cell, ["no record of the settings it was run with (made by an older version)"]))
        elif record.get("status") == "unreadable":
            stale.append((cell, [f"its record {cell.folder / RECORD} is unreadable"]))
        elif record.get("key") != settings_key(settings):
            stale.append((cell, settings_diff(record.get("settings", {}), settings)))
    return stale


def refuse_stale(stale: list[tuple[Cell, list[str]]], runs: Path) -> None:
    cell, changes = stale[0]
    more = f" (and {len(stale) - 1} more cell(s))" if len(stale) > 1 else ""
    shown = "; ".join(changes[:3]) + (f"; ... {len(changes) - 3} more" if len(changes) > 3 else "")
    raise ConfigError(f"{cell.folder} was run under other settings{more}: {shown}. Rerun it with these settings "
                      f"with --force, or keep both with a new runs folder (--runs {runs}-new)")
