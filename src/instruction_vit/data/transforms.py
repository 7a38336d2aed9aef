"""Image transforms (timm's) and a torch Dataset view of a labelled collection."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from timm.data import create_transform
from torch.utils.data import Dataset

from ..errors import ConfigError
from .datasets import DataError, LabelledImages
from .images import needed_side, train_side

log = logging.getLogger("instruction_vit.data")


def train_transform(img_size: int, mean, std, interpolation: str = "bicubic", randaugment: str | None = None,
                    hflip: float = 0.5, crop_scale: tuple[float, float] = (0.08, 1.0),
                    color_jitter: float = 0.4) -> Callable:
    """timm's training transform: RandomResizedCrop, flip, RandAugment by its config string (else ColorJitter),
    normalise. Its ``min_side`` is the shorter side at which the smallest crop still spans ``img_size`` pixels
    (what :class:`TransformedImages` lets the reader reduce a large image to, with a margin)."""
    transform = create_transform(img_size, is_training=True, auto_augment=randaugment, hflip=hflip, mean=mean,
                                 std=std, interpolation=interpolation, scale=crop_scale,
                                 color_jitter=color_jitter or None)
    transform.min_side = train_side(img_size, crop_scale[0])
    return transform


def eval_transform(img_size: int, mean, std, interpolation: str = "bicubic", crop_pct: float = 1.0) -> Callable:
    """timm's evaluation transform: resize, centre crop (``crop_pct``), normalise; its ``min_side`` is the shorter
    side it resizes to."""
    transform = create_transform(img_size, is_training=False, mean=mean, std=std, interpolation=interpolation,
                                 crop_pct=crop_pct)
    transform.min_side = needed_side(img_size, crop_pct)
    return transform


def transform_side(transform: Callable) -> int | None:
    """The shorter side ``transform`` resizes images to (``min_side``, set by :func:`train_transform` and
    :func:`eval_transform`); ``None`` for other transforms: their images are decoded whole."""
    return getattr(transform, "min_side", None)


class TransformedImages(Dataset):
    """``(transform(image), label)`` pairs of a labelled collection, for a DataLoader.

    ``bad_images="error"``: an unreadable image raises :class:`DataError` naming it. ``"skip"``: a safety net for
    files that fail only when read (the splits are meant to be cleaned first by
    :func:`~instruction_vit.data.drop_unreadable`): the sample is replaced by the next readable sample of the same
    class (cyclically, in index order), so batches stay full and the replacement is deterministic; each file is
    logged once per process (loader workers are processes: they cannot count for the main process).

    Images are read reduced for the transform (:meth:`~instruction_vit.data.LabelledImages.load_reduced` with
    :func:`transform_side`): a 12000-px file costs its decode, not a full-size RGB copy per sample.
    """

    def __init__(self, data: LabelledImages, transform: Callable, bad_images: str = "error"):
        if bad_images not in ("error", "skip"):
            raise ConfigError(f"bad_images={bad_images!r}; choose error or skip")
        self.data, self.transform, self.bad_images = data, transform, bad_images
        self.min_side = transform_side(transform)
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = self.data.labels[index]
        if index in self._unreadable:
            return self.transform(self._substitute(index)), label
        try:
            image = self._load(index)
        except DataError as err:
            if self.bad_images != "skip":
                raise
            log.warning("skipping unreadable image %s (replaced by another of its class): %s",
                        self.data.image_id(index), err)
            self._unreadable.add(index)
            image = self._substitute(index)
        return self.transform(image), label

    def _load(self, index: int):
        """The image at ``index``, reduced for the transform where the collection can (duck-typed collections with
        only ``load_image`` load it whole)."""
        if self.min_side is None or not hasattr(self.data, "load_reduced"):
            return self.data.load_image(index)
        return self.data.load_reduced(index, self.min_side)

    def _substitute(self, index: int):
        label, n = self.data.labels[index], len(self.data)
        for step in range(1, n):
            j = (index + step) % n
            if self.data.labels[j] != label or j in self._unreadable:
                continue
            try:
                return self._load(j)
            except DataError as err:
                log.warning("skipping unreadable image %s (replaced by another of its class): %s",
                            self.data.image_id(j), err)
                self._unreadable.add(j)
        raise DataError(f"no readable image of class {self.data.class_names[label]!r} is left to stand in for "
                        f"{self.data.image_id(index)}")
