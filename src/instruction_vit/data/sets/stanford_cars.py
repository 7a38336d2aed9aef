"""Stanford Cars: ``stanford_cars/{cars_train,cars_test}/<00001>.jpg``,
``devkit/{cars_meta.mat,cars_train_annos.mat}`` and ``cars_test_annos_withlabels.mat`` (torchvision's layout); the
official train set split per class into train and ``data.val_fraction`` val (``data.split_seed``), the official
test set kept. ``stanford_cars/split_zhou_StanfordCars.json`` gives the splits instead when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import DataConfig
from ..datasets import FileImages, LabelledImages
from . import DataSet, carve_val, file_records, loadmat, need, register_dataset

META, TRAIN_ANNOS, TEST_ANNOS = "devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"


@register_dataset("stanford_cars")
class StanfordCars(DataSet):
    folder = "stanford_cars"
    split_file = "split_zhou_StanfordCars.json"
    coop_template = "a photo of a {}."

    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        base = self.home(cfg)
        meta = loadmat(need(base / META, self.name))["class_names"].tolist()
        # CoOp moves the year to the front: "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV".
        class_names = [" ".join([n.split(" ")[-1], *n.split(" ")[:-1]]) for n in meta]

        def read(annos: Path, folder: str) -> FileImages:
            rows = loadmat(need(annos, self.name))["annotations"]
            need(base / folder, self.name)
            return FileImages(base, [f"{folder}/{r['fname']}" for r in rows], [int(r["class"]) - 1 for r in rows],
                              class_names)

        train, val = carve_val(read(base / TRAIN_ANNOS, "cars_train"), cfg.val_fraction, cfg.split_seed)
        return {"train": train, "val": val, "test": read(base / TEST_ANNOS, "cars_test")}

    def source(self, cfg: DataConfig) -> dict[str, Any]:
        files = file_records([self.home(cfg) / f for f in (META, TRAIN_ANNOS, TEST_ANNOS)])
        return {"source": "official", "files": files,
                "val_from_train": {"fraction": cfg.val_fraction, "seed": cfg.split_seed}}
