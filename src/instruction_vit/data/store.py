"""Decode once: a labelled collection as a memory-mapped uint8 array ``[N, S, S, 3]``.

Decoding JPEGs and augmenting on the CPU every epoch caps a GPU run at under half its compute speed
(REFERENCE.md). The store is written once per (images, size) — each image resized by its shorter side to ``S``
and centre-cropped — and read back as uint8 batches with no decoding; augmentation then runs on the GPU
(:mod:`instruction_vit.data.gpu_augment`). ``S`` is a little larger than the training size (e.g. 256 for
224) so random crops have room.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .datasets import LabelledImages

_WORKER_DATA: LabelledImages | None = None


def _square(image: Image.Image, size: int) -> np.ndarray:
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)).convert("RGB"), dtype=np.uint8)


def _decode(args: tuple[int, int]) -> tuple[int, np.ndarray]:
    index, size = args
    return index, _square(_WORKER_DATA.load_image(index), size)


def _init_worker(data: LabelledImages) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data


def store_key(data: LabelledImages, size: int) -> str:
    ids = [data.image_id(i) for i in range(len(data))]
    return hashlib.sha256(json.dumps([size, ids, list(data.class_names)]).encode()).hexdigest()[:24]


def build_store(data: LabelledImages, size: int, folder: str | Path, workers: int = 0, progress=None) -> Path:
    """Write (or find) the store of ``data`` at ``size`` under ``folder``; returns its directory."""
    target = Path(folder) / f"store-{size}px-{store_key(data, size)}"
    if (target / "meta.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "images.u8.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(data), size, size, 3))
    task = progress.add_task(f"decoding {len(data)} images once ({size} px)", total=len(data)) if progress else None
    jobs = [(i, size) for i in range(len(data))]
    if workers > 0:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(data,)) as pool:
            for index, pixels in pool.map(_decode, jobs, chunksize=64):
                array[index] = pixels
                if progress:
                    progress.advance(task)
    else:
        for index in range(len(data)):
            array[index] = _square(data.load_image(index), size)
            if progress:
                progress.advance(task)
    array.flush()
    del array
    os.replace(tmp, target / "images.npy")
    np.save(target / "labels.npy", np.asarray(data.labels, dtype=np.int64))
    meta = {"size": size, "count": len(data), "class_names": list(data.class_names)}
    (target / "meta.json").write_text(json.dumps(meta), encoding="utf-8")  # written last: the store is whole
    if progress:
        progress.remove_task(task)
    return target


class StoreDataset(Dataset):
    """``(uint8 image [S, S, 3], label)`` pairs read from a store (memory-mapped: no decoding)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"no image store at {folder} (build it with build_store)")
        self.images = np.load(folder / "images.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy")
        self.meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[index])), int(self.labels[index])  # a copy: the map is read-only
