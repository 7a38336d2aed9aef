"""The paper's four benchmarks read on their own, without ``load_splits``' few-shot, base/novel and limits.

Each benchmark is a module of :mod:`instruction_vit.data.sets` (``caltech101``, ``oxford_pets``, ``stanford_cars``,
``oxford_flowers``), which documents its on-disk layout (the one torchvision reads) and its CoOp split file.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .datasets import LabelledImages
from .sets import dataset


def load_benchmark(name: str, root: str | Path, val_fraction: float = 0.2, seed: int = 1) -> dict[str, LabelledImages]:
    """``{"train", "val", "test"}`` of the data set ``name`` under ``root``: the CoOp split file in its folder when
    present, else its official layout split as CoOp does (``val_fraction`` and ``seed`` where val is carved)."""
    return dataset(name).load(DataConfig(dataset=name, root=str(root), val_fraction=val_fraction, split_seed=seed))
