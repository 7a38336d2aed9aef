"""Decode once: a labelled collection as a memory-mapped uint8 array ``[N, S, S, 3]``.

Decoding JPEGs and augmenting on the CPU every epoch caps a GPU run at under half its compute speed (a PIL
pipeline with timm's RandAugment and 15 workers gave about 1,450 img/s against about 3,100 img/s for a compiled
ViT-B/16 step on one H100). The store is written once per (images, size) — each image resized by its shorter side to ``S``
and centre-cropped — and read back as uint8 batches with no decoding; augmentation then runs on the GPU
(:mod:`instruction_vit.data.gpu_augment`). ``S`` is a little larger than the training size (e.g. 256 for
224) so random crops have room.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, MissingFileError
from ..progress import task
from .datasets import DataError, LabelledImages
from .scan import BadImage, unreadable_error

log = logging.getLogger("instruction_vit.data")
_WORKER_DATA: LabelledImages | None = None


def _square(image: Image.Image, size: int) -> np.ndarray:
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)).convert("RGB"), dtype=np.uint8)


def _decode_one(data: LabelledImages, index: int, size: int, skip: bool) -> tuple[int, np.ndarray | None, str]:
    try:
        return index, _square(data.load_image(index), size), ""
    except DataError as err:
        if not skip:
            raise
        return index, None, str(err)


def _decode(args: tuple[int, int, bool]) -> tuple[int, np.ndarray | None, str]:
    return _decode_one(_WORKER_DATA, *args)


def _init_worker(data: LabelledImages) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data


def store_key(data: LabelledImages, size: int) -> str:
    ids = [data.image_id(i) for i in range(len(data))]
    return hashlib.sha256(json.dumps([size, data.location, ids, list(data.class_names)]).encode()).hexdigest()[:24]


def build_store(data: LabelledImages, size: int, folder: str | Path, workers: int = 0,
                bad_images: str = "error") -> Path:
    """Write (or find) the store of ``data`` at ``size`` under ``folder``; returns its directory.

    An unreadable image raises :class:`DataError` naming it (``bad_images="error"``), or (``"skip"``) is logged
    once and left out: the store then holds the readable images only, and ``meta.json`` lists the skipped files
    under ``"skipped"`` (``StoreDataset(path).meta["skipped"]``: ``[{"file", "reason"}]``). A store found with
    skipped files is refused in ``"error"`` mode.
    """
    if bad_images not in ("error", "skip"):
        raise ConfigError(f"bad_images={bad_images!r}; choose error or skip")
    skip = bad_images == "skip"
    target = Path(folder) / f"store-{size}px-{store_key(data, size)}"
    if (target / "meta.json").is_file():
        skipped = [BadImage(**b) for b in json.loads((target / "meta.json").read_text(encoding="utf-8"))
                   .get("skipped", [])]
        if skipped and not skip:
            raise unreadable_error(skipped, f"the image store {target} (built with data.bad_images=skip)")
        for b in skipped:
            log.warning("skipping unreadable image %s: %s", b.file, b.reason)
        return target
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "images.u8.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(data), size, size, 3))
    with task(f"decoding {len(data)} images once ({size} px)", len(data)) as progress:
        bad: dict[int, str] = {}

        def put(index: int, pixels: np.ndarray | None, reason: str) -> None:
            if pixels is None:
                bad[index] = reason
            else:
                array[index] = pixels
            progress.advance()

        if workers > 0:
            jobs = [(i, size, skip) for i in range(len(data))]
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(data,)) as pool:
                for result in pool.map(_decode, jobs, chunksize=64):
                    put(*result)
        else:
            for index in range(len(data)):
                put(*_decode_one(data, index, size, skip))
        labels = np.asarray(data.labels, dtype=np.int64)
        skipped = [BadImage(data.image_id(i), bad[i]) for i in sorted(bad)]
        if bad:
            if len(bad) == len(data):
                raise DataError(f"no image of the {len(data)} to store could be read (e.g. {skipped[0].file}: "
                                f"{skipped[0].reason}); check data.root")
            for b in skipped:
                log.warning("skipping unreadable image %s: %s", b.file, b.reason)
            keep = np.asarray([i for i in range(len(data)) if i not in bad])
            compact = np.lib.format.open_memmap(target / "images.u8.tmp2", mode="w+", dtype=np.uint8,
                                                shape=(len(keep), size, size, 3))
            for start in range(0, len(keep), 1024):
                compact[start:start + 1024] = array[keep[start:start + 1024]]
            compact.flush()
            del compact, array
            tmp.unlink()
            tmp = target / "images.u8.tmp2"
            labels = labels[keep]
        else:
            array.flush()
            del array
        os.replace(tmp, target / "images.npy")
        np.save(target / "labels.npy", labels)
        meta = {"size": size, "count": len(labels), "class_names": list(data.class_names),
                "skipped": [b.to_dict() for b in skipped]}
        (target / "meta.json").write_text(json.dumps(meta), encoding="utf-8")  # written last: the store is whole
    return target


class StoreDataset(Dataset):
    """``(uint8 image [S, S, 3], label)`` pairs read from a store (memory-mapped: no decoding)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise MissingFileError(f"no image store at {folder} (build it with build_store)")
        self.images = np.load(folder / "images.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy")
        self.meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[index])), int(self.labels[index])  # a copy: the map is read-only
