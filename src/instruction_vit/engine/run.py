"""Assembling a run from its config: device, data, prompt bank, ranker scores."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from timm.data import resolve_data_config
from torch.utils.data import DataLoader

from ..errors import ConfigError, DataError, MissingFileError
from ..config import Config, resolved_workers
from ..data import (
    LabelledImages,
    TransformedImages,
    drop_unreadable,
    eval_transform,
    load_splits,
    split_info,
    template_set,
    train_transform,
)
from ..prompts import PromptBank, build_prompt_bank
from ..prompts.encoders import joint_space, weights_id
from .rankers import image_features, prototype_scores, zero_shot_scores


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available here; use cpu or auto")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def run_splits(cfg: Config, workers: int | None = None):
    """The run's train / val / test, with unreadable images handled as ``data.bad_images`` says; returns the
    splits and the data record (where the splits came from, sizes, skipped files, worker count)."""
    workers = resolved_workers(cfg.data) if workers is None else workers
    splits, skipped = drop_unreadable(load_splits(cfg.data), cfg.data.bad_images, workers=workers)
    return splits, {**split_info(cfg.data, splits), "skipped_images": skipped.to_dict(), "num_workers": workers}


def transforms(cfg: Config, backbone: torch.nn.Module):
    """(train, eval) transforms at ``data.img_size`` with the backbone's own mean, std and interpolation."""
    dc = resolve_data_config({}, model=backbone)
    mean, std, interp = dc["mean"], dc["std"], dc["interpolation"]
    d = cfg.data
    return (train_transform(d.img_size, mean, std, interp, d.randaugment, d.hflip, (d.crop_min_scale, 1.0),
                            d.color_jitter),
            eval_transform(d.img_size, mean, std, interp))


def device_augment(cfg: Config, backbone: torch.nn.Module):
    """The batch-wise device augmentation matching :func:`transforms` (``data.gpu_augment``)."""
    from ..data.gpu_augment import GpuAugment

    dc, d = resolve_data_config({}, model=backbone), cfg.data
    return GpuAugment(d.img_size, tuple(dc["mean"]), tuple(dc["std"]), scale=(d.crop_min_scale, 1.0),
                      hflip=d.hflip, randaugment=d.randaugment, color_jitter=d.color_jitter)


def eval_loader(cfg: Config, backbone: torch.nn.Module, data: LabelledImages) -> DataLoader:
    """Evaluation batches of ``data`` in order."""
    # Strict: an evaluation image that fails to decode stops with its name (never a stand-in that skews the metric).
    return DataLoader(TransformedImages(data, transforms(cfg, backbone)[1]),
                      batch_size=cfg.train.batch_size,
                      num_workers=resolved_workers(cfg.data))


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


def ranker_scores(cfg: Config, train: LabelledImages, data: LabelledImages) -> Tensor:
    """``[M, N]`` ranker scores of every image of ``data`` for the top-K selection."""
    p = cfg.prompts
    if p.ranker == "zero_shot":
        if not joint_space(p.encoder):
            raise ConfigError(f"the zero-shot ranker needs a joint image-text encoder; {p.encoder!r} has none "
                             "(use prompts.encoder=conse or an open_clip model, or prompts.ranker=prototype)")
        text = prompt_bank(cfg, train, kind="text")
        feats = image_features(p.encoder, data, p.cache_dir, device=resolve_device(cfg.train.device))
        return zero_shot_scores(feats, text.features["text"])
    encoder = p.image_encoder or p.encoder
    device = resolve_device(cfg.train.device)
    train_feats = image_features(encoder, train, p.cache_dir, device=device)
    feats = image_features(encoder, data, p.cache_dir, device=device)
    return prototype_scores(feats, train_feats, torch.tensor(train.labels), train.num_classes)
