"""The train / val / test collections a run config asks for."""

from __future__ import annotations

from ..config import DataConfig
from .benchmarks import BENCHMARKS, load_benchmark
from .datasets import (
    DataError,
    LabelledImages,
    balanced_limit,
    class_subset,
    coop_split,
    fashion_mnist,
    few_shot,
    image_folder,
    stratified_split,
)


def load_splits(cfg: DataConfig) -> dict[str, LabelledImages]:
    """``{"train", "val", "test"}``; where the data has no val split, a seeded stratified one is carved from train.

    An image folder with no split is divided into train / val / test (``val_fraction`` each for val and test).
    """
    if cfg.dataset == "fashion_mnist":
        splits: dict[str, LabelledImages] = dict(fashion_mnist(cfg.root))
    elif cfg.dataset in BENCHMARKS:
        splits = dict(load_benchmark(cfg.dataset, cfg.root, cfg.val_fraction, cfg.split_seed))
    elif cfg.dataset == "folder":
        everything = image_folder(cfg.root)
        rest, test = stratified_split(everything, cfg.val_fraction, cfg.split_seed)
        splits = {"train": rest, "test": test}
    else:
        splits = dict(coop_split(cfg.split_file, cfg.root))
    if "test" not in splits:
        raise DataError("the data has no test split; add 'test' to the split file")
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
