"""A run's prompt bank from its config: built (cached by its key) from the run's encoder, templates and
descriptions, or read from ``prompts.bank_file`` and checked against the run (its classes, its training images,
its encoders)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..data import LabelledImages, template_set
from ..devices import resolve_device
from ..errors import ConfigError, DataError, MissingFileError
from .bank import PromptBank, build_prompt_bank
from .encoders import weights_id


def read_descriptions(path: str | Path | Mapping[str, Any] | None) -> dict[str, list[str]] | None:
    """A descriptions file (YAML/JSON: class name -> sentences), or such a mapping, as a mapping; ``None`` for
    none."""
    if path is None:
        return None
    if isinstance(path, Mapping):
        return {str(k): [str(s) for s in (v if isinstance(v, list) else [v])] for k, v in path.items()}
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"descriptions file not found: {file}")
    content = yaml.safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise ConfigError(f"{file} must map class names to lists of sentences")
    return {str(k): [str(s) for s in (v if isinstance(v, list) else [v])] for k, v in content.items()}


def prompt_bank(cfg: Config, train: LabelledImages, kind: str | None = None) -> PromptBank | None:
    """The run's prompt bank (``None`` for ``prompts.kind=none``), from the cache when its key matches."""
    p = cfg.prompts
    kind = kind or p.kind
    if kind == "none":
        return None
    if p.bank_file is not None and kind == p.kind:
        bank = PromptBank.load(p.bank_file)
        if bank.class_names != train.class_names:
            raise DataError(
                f"prompt bank {p.bank_file} was built for other classes ({bank.num_classes}: "
                f"{bank.class_names[:4]}...) than the data ({train.num_classes}: {train.class_names[:4]}...); "
                "rebuild it for these classes, in label order")
        if bank.kind != kind:
            raise ConfigError(f"prompt bank {p.bank_file} holds {bank.kind} prompts but prompts.kind={kind}")
        _check_bank_file(cfg, bank, train)
        return bank
    return build_prompt_bank(
        kind, train.class_names, text_encoder=p.encoder, image_encoder=p.image_encoder or p.encoder,
        templates=template_set(p.templates), descriptions=read_descriptions(p.descriptions), images=train,
        per_class=p.per_class, seed=p.seed, cache_dir=p.cache_dir,
        device=resolve_device(cfg.train.device), image_split="train",
    )


def _check_bank_file(cfg: Config, bank: PromptBank, train: LabelledImages) -> None:
    """A bank built elsewhere must fit this run: image prompts from its training images only, and the encoders
    the run names (the ranker and new class names use them)."""
    p, m = cfg.prompts, bank.meta
    used = {i for ids in m.get("image_ids", []) for i in ids}
    if used:
        train_ids = {train.image_id(i) for i in range(len(train))}
        outside = sorted(used - train_ids)
        if outside or m.get("image_root", train.location) != train.location:
            shown = ", ".join(outside[:3]) or f"images under {m.get('image_root')}"
            raise DataError(
                f"prompt bank {p.bank_file} draws image prompts from images that are not in this run's training "
                f"split ({shown}): they may be test images. Rebuild it with the run's split (ivit prompts build "
                f"--folder ROOT --val-fraction {cfg.data.val_fraction} --split-seed {cfg.data.split_seed})")
    for key, spec in (("text_weights", p.encoder), ("image_weights", p.image_encoder or p.encoder)):
        if key in m and m[key] != weights_id(spec):
            raise ConfigError(f"prompt bank {p.bank_file} was encoded with weights {m[key]!r}, but the run's encoder "
                             f"{spec!r} gives {weights_id(spec)!r}; set prompts.encoder to the bank's encoder")
