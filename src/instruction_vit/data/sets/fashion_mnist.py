"""Fashion-MNIST from its original idx files (``.gz`` or not), e.g. Debian's ``dataset-fashion-mnist``:
the official 60k train and 10k test sets (``load_splits`` carves val from train)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import DataConfig
from ...errors import DataError
from ..datasets import LabelledImages, fashion_mnist, fashion_mnist_file
from . import DataSet, file_records, register_dataset

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register_dataset("fashion_mnist")
class FashionMNIST(DataSet):
    coop_template = "a photo of a {}, a type of clothing."

    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        return dict(fashion_mnist(cfg.root))

    def source(self, cfg: DataConfig) -> dict[str, Any]:
        found: list[Path] = []
        for stem in IDX_FILES:
            try:
                found.append(fashion_mnist_file(Path(cfg.root).expanduser(), stem))
            except DataError:
                pass
        return {"source": "official", "files": file_records(found), "val_from_train": None}
