"""Caltech-101 as CoOp uses it: ``caltech101/101_ObjectCategories/<category>/image_0001.jpg`` (torchvision's layout),
two folders dropped and four renamed, each class split 50/20/30 into train/val/test with ``data.split_seed``.
``caltech101/split_zhou_Caltech101.json`` gives the splits instead when present."""

from __future__ import annotations

from typing import Any

from ...config import DataConfig
from ..datasets import FileImages, LabelledImages, per_class_split
from . import DataSet, clean_name, need, register_dataset

IGNORED = ("BACKGROUND_Google", "Faces_easy")
RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}


@register_dataset("caltech101")
class Caltech101(DataSet):
    folder = "caltech101"
    split_file = "split_zhou_Caltech101.json"
    image_dir = "101_ObjectCategories"
    coop_template = "a photo of a {}."

    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        images = need(self.home(cfg) / self.image_dir, self.name)
        categories = sorted(p.name for p in images.iterdir() if p.is_dir() and p.name not in IGNORED)
        paths: list[str] = []
        labels: list[int] = []
        for label, category in enumerate(categories):
            files = sorted(f"{category}/{p.name}" for p in (images / category).iterdir() if p.suffix.lower() == ".jpg")
            paths += files
            labels += [label] * len(files)
        parts = per_class_split(labels, len(categories), (FRACTIONS["train"], FRACTIONS["val"]), cfg.split_seed)
        names = [clean_name(RENAMES.get(c, c)) for c in categories]
        return {split: FileImages(images, [paths[i] for i in idx], [labels[i] for i in idx], names)
                for split, idx in zip(FRACTIONS, parts)}

    def source(self, cfg: DataConfig) -> dict[str, Any]:
        return {"source": "seeded", "seed": cfg.split_seed, "fractions": dict(FRACTIONS)}
