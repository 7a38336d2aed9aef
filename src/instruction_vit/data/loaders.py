"""A run config's data, ready for a model: its splits (unreadable images handled as ``data.bad_images`` says), the
train and eval transforms at the backbone's own mean, std and interpolation, the device augmentation, and the
evaluation loader."""

from __future__ import annotations

import torch
from timm.data import resolve_data_config
from torch.utils.data import DataLoader

from ..config import Config, resolved_workers
from .datasets import LabelledImages
from .scan import drop_unreadable
from .splits import load_splits, split_info
from .transforms import TransformedImages, eval_transform, train_transform


def run_splits(cfg: Config, workers: int | None = None):
    """The run's train / val / test, with unreadable images handled as ``data.bad_images`` says; returns the
    splits and the data record (where the splits came from, sizes, skipped files, worker count)."""
    workers = resolved_workers(cfg.data) if workers is None else workers
    splits, skipped = drop_unreadable(load_splits(cfg.data), cfg.data.bad_images, workers=workers)
    return splits, {**split_info(cfg.data, splits), "skipped_images": skipped.to_dict(), "num_workers": workers}


def transforms(cfg: Config, backbone: torch.nn.Module):
    """(train, eval) transforms at ``data.img_size`` with the backbone's own mean, std and interpolation."""
    dc = resolve_data_config({}, model=backbone)
    mean, std, interp = dc["mean"], dc["std"], dc["interpolation"]
    d = cfg.data
    return (train_transform(d.img_size, mean, std, interp, d.randaugment, d.hflip, (d.crop_min_scale, 1.0),
                            d.color_jitter),
            eval_transform(d.img_size, mean, std, interp))


def device_augment(cfg: Config, backbone: torch.nn.Module):
    """The batch-wise device augmentation matching :func:`transforms` (``data.gpu_augment``)."""
    from ..data.gpu_augment import GpuAugment

    dc, d = resolve_data_config({}, model=backbone), cfg.data
    return GpuAugment(d.img_size, tuple(dc["mean"]), tuple(dc["std"]), scale=(d.crop_min_scale, 1.0),
                      hflip=d.hflip, randaugment=d.randaugment, color_jitter=d.color_jitter)


def eval_loader(cfg: Config, backbone: torch.nn.Module, data: LabelledImages) -> DataLoader:
    """Evaluation batches of ``data`` in order."""
    # Strict: an evaluation image that fails to decode stops with its name (never a stand-in that skews the metric).
    return DataLoader(TransformedImages(data, transforms(cfg, backbone)[1]),
                      batch_size=cfg.train.batch_size,
                      num_workers=resolved_workers(cfg.data))
