"""An image folder, one subfolder per class (sorted names are the classes), split per class with a seed: test and
val each hold ``data.val_fraction`` of every class."""

from __future__ import annotations

from typing import Any

from ...config import DataConfig
from ..datasets import LabelledImages, image_folder, stratified_split
from . import DataSet, register_dataset


@register_dataset("folder")
class Folder(DataSet):
    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        rest, test = stratified_split(image_folder(cfg.root), cfg.val_fraction, cfg.split_seed)
        return {"train": rest, "test": test}

    def source(self, cfg: DataConfig) -> dict[str, Any]:
        return {"source": "seeded", "seed": cfg.split_seed, "val_fraction": cfg.val_fraction,
                "test_fraction": cfg.val_fraction}
