"""Oxford-IIIT Pets: ``oxford-iiit-pet/images/<Breed_Name>_<n>.jpg`` and ``annotations/{trainval,test}.txt``
(torchvision's layout); the official trainval set split per class into train and ``data.val_fraction`` val
(``data.split_seed``), the official test set kept. ``oxford-iiit-pet/split_zhou_OxfordPets.json`` gives the splits
instead when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import DataConfig
from ..datasets import FileImages, LabelledImages
from . import DataSet, carve_val, clean_name, file_records, need, register_dataset

LISTS = ("annotations/trainval.txt", "annotations/test.txt")


@register_dataset("oxford_pets")
class OxfordPets(DataSet):
    folder = "oxford-iiit-pet"
    split_file = "split_zhou_OxfordPets.json"
    image_dir = "images"
    coop_template = "a photo of a {}, a type of pet."

    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        base = self.home(cfg)
        images = need(base / self.image_dir, self.name)
        tv_paths, tv_labels, names = self._list(base, "trainval")
        te_paths, te_labels, _ = self._list(base, "test")
        class_names = [names[i] for i in range(len(names))]
        train, val = carve_val(FileImages(images, tv_paths, tv_labels, class_names), cfg.val_fraction,
                               cfg.split_seed)
        return {"train": train, "val": val, "test": FileImages(images, te_paths, te_labels, class_names)}

    def source(self, cfg: DataConfig) -> dict[str, Any]:
        return {"source": "official", "files": file_records([self.home(cfg) / f for f in LISTS]),
                "val_from_train": {"fraction": cfg.val_fraction, "seed": cfg.split_seed}}

    def _list(self, base: Path, split: str) -> tuple[list[str], list[int], dict[int, str]]:
        paths, labels, names = [], [], {}
        for line in need(base / "annotations" / f"{split}.txt", self.name).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            image_id, label = line.split()[:2]
            paths.append(f"{image_id}.jpg")
            labels.append(int(label) - 1)
            names[int(label) - 1] = clean_name(image_id.rsplit("_", 1)[0].lower())
        return paths, labels, names
