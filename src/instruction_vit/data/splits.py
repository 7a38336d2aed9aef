"""The train / val / test collections a run config asks for."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import ConfigError
from .datasets import (DataError, LabelledImages, balanced_limit, class_subset, few_shot, stratified_split,
                       with_pixel_limit)
from .scan import drop_unreadable
from .sets import absolute, dataset


def load_splits(cfg: DataConfig) -> dict[str, LabelledImages]:
    """``{"train", "val", "test"}`` of the data set ``cfg.dataset`` (see :func:`list_datasets`), then base/novel
    classes, few-shot sampling and limits; where the data has no val split, a seeded stratified one is carved from
    train (``val_fraction``; with 0, val is the test split).

    An image folder with no split is divided into train / val / test (``val_fraction`` each for val and test).
    Their files are read under ``max_image_pixels``.
    """
    splits = {name: with_pixel_limit(data, cfg.max_image_pixels)
              for name, data in dataset(cfg.dataset).load(cfg).items()}
    if "test" not in splits:
        raise DataError(f"{cfg.dataset} at {cfg.root} has no test split; add 'test' to the split file")
    if "val" not in splits:
        if cfg.val_fraction <= 0:
            splits["val"] = splits["test"]
        else:
            splits["train"], splits["val"] = stratified_split(splits["train"], cfg.val_fraction, cfg.split_seed)
    splits = {name: class_subset(data, cfg.classes) for name, data in splits.items()}
    if cfg.shots is not None:
        splits["train"] = few_shot(splits["train"], cfg.shots, cfg.shots_seed)
        splits["val"] = few_shot(splits["val"], min(cfg.shots, 4), cfg.shots_seed)
    splits["train"] = balanced_limit(splits["train"], cfg.train_limit, cfg.split_seed)
    for name in ("val", "test"):
        splits[name] = balanced_limit(splits[name], cfg.eval_limit, cfg.split_seed)
    for name, data in splits.items():
        if len(data) == 0:
            fix = {"train": "check data.root, data.classes and data.shots",
                   "val": "raise data.val_fraction (held out per class, rounded) or data.eval_limit",
                   "test": "raise data.val_fraction (image folders) or data.eval_limit, or check the split file"}[name]
            raise DataError(f"the {name} split of {cfg.dataset} at {cfg.root} has no images; {fix}")
    return splits


# -- provenance --------------------------------------------------------------------------------
SPLIT_RECIPE = 1  # bump when load_splits would put images elsewhere for the same config


def split_identity(cfg: DataConfig) -> dict[str, Any]:
    """What identifies the splits of ``cfg`` without listing its images (no walk of the image folders): dataset,
    absolute root, the source of the split (a CoOp split file's path and sha256 — for a benchmark, the one in its
    folder when present; official list files with their sha256; or the seed and fractions of a seeded split),
    and the settings that shape it afterwards (classes, shots, limits). Equal identities give equal splits as
    long as the images themselves are unchanged; meant as part of a cache key."""
    source = dict(dataset(cfg.dataset).provenance(cfg))  # before few-shot, base/novel and limits
    if "val_from_train" in source and source["val_from_train"] is None:  # carved by load_splits
        source["val_from_train"] = ({"fraction": cfg.val_fraction, "seed": cfg.split_seed}
                                    if cfg.val_fraction > 0 else "test")
    limited = cfg.train_limit is not None or cfg.eval_limit is not None
    return {
        "recipe": SPLIT_RECIPE,
        "dataset": cfg.dataset,
        "root": absolute(cfg.root),
        **source,
        "classes": cfg.classes,
        "shots": cfg.shots,
        "shots_seed": cfg.shots_seed if cfg.shots is not None else None,
        "train_limit": cfg.train_limit,
        "eval_limit": cfg.eval_limit,
        "limit_seed": cfg.split_seed if limited else None,
    }


def split_info(cfg: DataConfig, splits: Mapping[str, LabelledImages]) -> dict[str, Any]:
    """Where ``splits`` (from ``load_splits(cfg)``, perhaps without unreadable files) came from: the
    :func:`split_identity`, plus their sizes, the number of classes, and whether val is the test split."""
    info = split_identity(cfg)
    info["sizes"] = {name: len(data) for name, data in splits.items()}
    info["num_classes"] = splits["train"].num_classes
    if splits.get("val") is not None and splits.get("val") is splits.get("test"):
        info["val_is_test"] = True
    return info


def training_split(root: str | Path, val_fraction: float = 0.1, split_seed: int = 0,
                   bad_images: str = "error", workers: int = 0) -> LabelledImages:
    """The train split of the image folder ``root`` exactly as a run with ``data.dataset=folder`` and these
    settings trains on (image prompts drawn from it never come from val or test images).

    ``bad_images="skip"`` leaves unreadable files out, as a run with ``data.bad_images=skip`` does."""
    cfg = DataConfig(dataset="folder", root=str(root), val_fraction=val_fraction, split_seed=split_seed)
    train = load_splits(cfg)["train"]
    if bad_images == "skip":
        train = drop_unreadable({"train": train}, "skip", workers)[0]["train"]
    elif bad_images != "error":
        raise ConfigError(f"bad_images={bad_images!r}; choose error or skip")
    return train
