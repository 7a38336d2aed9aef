"""Data-path throughput (img/s): timm's per-image PIL pipeline (decode + RandomResizedCrop + flip + RandAugment
+ normalise, in DataLoader workers) vs the decode-once uint8 store with batch-wise device augmentation.
No model: this measures only what feeds the training step.

    python bench/data_path.py                       # CPU; Fashion-MNIST 28 px (the demo's data)
    python bench/data_path.py --device cuda --size 224 --images 20000   # the GPU setting (synthetic JPEGs)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from instruction_vit.data import TransformedImages, fashion_mnist, image_folder, train_transform
from instruction_vit.data.gpu_augment import GpuAugment
from instruction_vit.data.image_store import StoreDataset, build_store

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
RANDAUGMENT = "rand-m9-mstd0.5"


def synthetic_jpegs(folder: Path, count: int, side: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        (folder / f"c{i % 10}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 10}" / f"{i}.jpg", quality=90)


def rate(loader, step, limit: int) -> float:
    seen, start = 0, None
    for i, (images, _) in enumerate(loader):
        if i == 2:  # after warm-up (workers started, caches touched)
            start, seen = time.perf_counter(), 0
        step(images)
        seen += images.shape[0]
        if seen >= limit and start is not None:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=28, help="training size; 28 reads Fashion-MNIST")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.size == 28:
            data = fashion_mnist()["train"]
            source = "Fashion-MNIST idx (in memory)"
        else:
            synthetic_jpegs(Path(tmp) / "jpg", args.images, round(args.size / 0.875))
            data = image_folder(Path(tmp) / "jpg")
            source = f"{args.images} synthetic JPEGs"
        pil = TransformedImages(data, train_transform(args.size, MEAN, STD, randaugment=RANDAUGMENT))
        pil_loader = DataLoader(pil, batch_size=args.batch, shuffle=True, num_workers=args.workers)
        pil_rate = rate(pil_loader, lambda x: x.to(device), args.images)

        start = time.perf_counter()
        store = build_store(data, round(args.size / 0.875), Path(tmp) / "stores", workers=args.workers)
        build_seconds = time.perf_counter() - start
        augment = GpuAugment(args.size, MEAN, STD, scale=(0.08, 1.0), randaugment=RANDAUGMENT)
        store_loader = DataLoader(StoreDataset(store), batch_size=args.batch, shuffle=True,
                                  num_workers=args.workers, pin_memory=device.type == "cuda")

        def device_step(x):
            out = augment(x.to(device, non_blocking=True))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        store_rate = rate(store_loader, device_step, args.images)
    print(f"data path, {source}, {args.size} px, batch {args.batch}, {args.workers} loader workers, "
          f"device {device}, RandAugment {RANDAUGMENT}")
    print("| pipeline | img/s |")
    print("|---|---|")
    print(f"| PIL decode + timm transforms per image | {pil_rate:.0f} |")
    print(f"| uint8 store + batch-wise device augmentation | {store_rate:.0f} |")
    print(f"(the store was written once in {build_seconds:.1f} s)")


if __name__ == "__main__":
    main()
