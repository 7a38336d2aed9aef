"""Oxford Flowers-102: ``flowers-102/jpg/image_00001.jpg`` and ``{imagelabels.mat,setid.mat}`` (torchvision's
layout), with the official train / val / test sets and torchvision's class names.
``flowers-102/split_zhou_OxfordFlowers.json`` gives the splits instead when present."""

from __future__ import annotations

from typing import Any

from ...config import DataConfig
from ..datasets import FileImages, LabelledImages
from . import DataSet, file_records, loadmat, need, register_dataset

LISTS = ("imagelabels.mat", "setid.mat")
SETID_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


@register_dataset("oxford_flowers")
class OxfordFlowers(DataSet):
    folder = "flowers-102"
    split_file = "split_zhou_OxfordFlowers.json"
    image_dir = "jpg"
    coop_template = "a photo of a {}, a type of flower."

    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        from torchvision.datasets import Flowers102

        base = self.home(cfg)
        labels = loadmat(need(base / "imagelabels.mat", self.name))["labels"]
        setid = loadmat(need(base / "setid.mat", self.name))
        images = need(base / self.image_dir, self.name)
        out: dict[str, LabelledImages] = {}
        for split, key in SETID_KEYS.items():
            ids = [int(i) for i in setid[key].tolist()]
            out[split] = FileImages(images, [f"image_{i:05d}.jpg" for i in ids],
                                    [int(labels[i - 1]) - 1 for i in ids], list(Flowers102.classes))
        return out

    def source(self, cfg: DataConfig) -> dict[str, Any]:
        return {"source": "official", "files": file_records([self.home(cfg) / f for f in LISTS])}
