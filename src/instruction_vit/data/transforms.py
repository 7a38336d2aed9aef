"""Image transforms (timm's) and a torch Dataset view of a labelled collection."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.data import create_transform
from torch.utils.data import Dataset

from .datasets import LabelledImages


def train_transform(img_size: int, mean, std, interpolation: str = "bicubic", randaugment: str | None = None,
                    hflip: float = 0.5, crop_scale: tuple[float, float] = (0.08, 1.0),
                    color_jitter: float = 0.4) -> Callable:
    """timm's training transform: RandomResizedCrop, flip, RandAugment by its config string (else ColorJitter),
    normalise."""
    return create_transform(img_size, is_training=True, auto_augment=randaugment, hflip=hflip, mean=mean, std=std,
                            interpolation=interpolation, scale=crop_scale, color_jitter=color_jitter or None)


def eval_transform(img_size: int, mean, std, interpolation: str = "bicubic", crop_pct: float = 1.0) -> Callable:
    """timm's evaluation transform: resize, centre crop (``crop_pct``), normalise."""
    return create_transform(img_size, is_training=False, mean=mean, std=std, interpolation=interpolation,
                            crop_pct=crop_pct)


class TransformedImages(Dataset):
    """``(transform(image), label)`` pairs of a labelled collection, for a DataLoader."""

    def __init__(self, data: LabelledImages, transform: Callable):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.data.load_image(index)), self.data.labels[index]
