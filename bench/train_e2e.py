"""End-to-end training throughput through the real engine (``instruction_vit.training.loop``): data loading,
augmentation, the step, metrics and checkpoints, from synthetic JPEGs in an image folder. Compares timm's per-image
PIL pipeline with the decode-once store + batch-wise device augmentation, and all N prompts with K+1 selection.

    python bench/train_e2e.py --mode cpu      # the demo's model (28 px, 4 blocks), 10 classes, K=3
    python bench/train_e2e.py --mode gpu      # ViT-B/16, 224 px, 102 classes, K=10, batch 256, bf16, compiled

Training img/s is read from each run's metrics (``train_images_per_second``: the training loop alone, after the
device has finished), averaged over the epochs after the first (the first pays for workers, caches and
compilation). The store is built once, before the timed runs (its time is printed). The prompt bank is random
features of the encoder's width saved as a bank file: the throughput does not depend on what the prompts say, and
no encoder has to be installed. Each cell runs in its own process, so peak GPU memory is its own.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cells import device_name, run_cell

MODES = {
    "cpu": dict(backbone="vit_tiny_patch16_224", kwargs=dict(patch_size=7, embed_dim=128, depth=4, num_heads=4),
                img=28, classes=10, per_class=300, batch=128, k=3, prompt_dim=384, epochs=3, workers=2,
                compile=False, randaugment="rand-m9-mstd0.5"),
    "tiny": dict(backbone="vit_tiny_patch16_224", kwargs=dict(patch_size=4, embed_dim=32, depth=1, num_heads=2),
                 img=16, classes=4, per_class=20, batch=16, k=1, prompt_dim=8, epochs=2, workers=0, compile=False,
                 randaugment="rand-m9-mstd0.5"),  # the test suite's smoke run
    "gpu": dict(backbone="vit_base_patch16_224", kwargs={}, img=224, classes=102, per_class=160, batch=256, k=10,
                prompt_dim=512, epochs=3, workers=15, compile=True, randaugment="rand-m9-mstd0.5"),
}
CELLS = {  # name -> (device augmentation from the store, K+1 prompts in training)
    "pil-all": (False, False),
    "pil-k1": (False, True),
    "store-all": (True, False),
    "store-k1": (True, True),
}


def _jpeg(args: tuple[Path, int, int]) -> None:
    import numpy as np
    from PIL import Image

    path, seed, side = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth images: JPEGs of realistic size
    image = Image.fromarray(small).resize((side * 4 // 3, side), Image.BILINEAR)
    image.save(path, quality=90)


def synthetic_folder(root: Path, classes: int, per_class: int, side: int, workers: int) -> None:
    jobs = []
    for c in range(classes):
        (root / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
        jobs += [(root / f"class_{c:03d}" / f"{i}.jpg", c * per_class + i, side) for i in range(per_class)]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_jpeg, jobs, chunksize=64))


def config(mode: str, folder: Path, work: Path, store: bool, select: bool):
    from instruction_vit.config import load_config

    m = MODES[mode]
    overrides = {
        "data.dataset": "folder", "data.root": str(folder), "data.img_size": m["img"],
        "data.val_fraction": max(0.02, 1 / m["per_class"]), "data.eval_limit": 2 * m["classes"],
        "data.randaugment": m["randaugment"],
        "data.gpu_augment": store, "data.store_dir": str(work / "stores"), "data.num_workers": m["workers"],
        "prompts.bank_file": str(work / "bank.safetensors"), "prompts.select_k": None,
        "prompts.train_select_k": m["k"] if select else None,
        "model.backbone": m["backbone"], "model.backbone_kwargs": m["kwargs"], "model.pretrained": None,
        "train.epochs": m["epochs"], "train.batch_size": m["batch"], "train.optimizer": "adamw",
        "train.lr": 1e-4, "train.warmup_epochs": 0, "train.eval_every": 1000, "train.compile": m["compile"],
        "train.mixup": 0.8, "train.cutmix": 1.0, "train.log_every": 50,
    }
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def prepare(mode: str, work: Path) -> dict:
    """The image folder, a random prompt bank for its classes, and the store (built once, timed)."""
    import torch

    from instruction_vit.data import load_splits
    from instruction_vit.data.image_store import build_store
    from instruction_vit.prompts import PromptBank

    m = MODES[mode]
    start = time.perf_counter()
    synthetic_folder(work / "images", m["classes"], m["per_class"], round(m["img"] / 0.875), m["workers"])
    made = time.perf_counter() - start
    cfg = config(mode, work / "images", work, True, False)
    train = load_splits(cfg.data)["train"]
    features = torch.nn.functional.normalize(torch.randn(train.num_classes, m["prompt_dim"]), dim=-1)
    PromptBank("text", {"text": features}, list(train.class_names), {"kind": "text", "encoder": "random",
                                                                      "class_names": list(train.class_names)}
               ).save(work / "bank.safetensors")
    start = time.perf_counter()
    build_store(train, round(m["img"] / 0.875), work / "stores", m["workers"])
    return {"images": len(train), "jpeg_seconds": made, "store_seconds": time.perf_counter() - start}


def measure(mode: str, work: Path, cell: str) -> dict:
    import torch

    from instruction_vit.training import train

    store, select = CELLS[cell]
    cfg = config(mode, work / "images", work, store, select)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(cfg, work / "runs" / cell, force=True)
    rows = [json.loads(line) for line in (work / "runs" / cell / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train_images_per_second"] for r in rows[1:]] or [rows[0]["train_images_per_second"]]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {"cell": cell, "data": "store + device augmentation" if store else "PIL per image (loader workers)",
            "prompts": f"K+1 = {MODES[mode]['k'] + 1}" if select else f"all N = {MODES[mode]['classes']}",
            "img_s": sum(rates) / len(rates), "first_epoch_img_s": rows[0]["train_images_per_second"],
            "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset of: " + ", ".join(CELLS))
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one cell, in a fresh process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.mode, Path(args.work), args.one)))
        return
    cells = [c.strip() for c in args.cells.split(",")]
    for cell in cells:
        if cell not in CELLS:
            raise SystemExit(f"unknown cell {cell!r}; choose from: {', '.join(CELLS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        prep = prepare(args.mode, work)
        rows = [run_cell(__file__, "--mode", args.mode, "--work", str(work), "--one", cell) for cell in cells]
    import torch

    m = MODES[args.mode]
    print(f"mode {args.mode}: {m['backbone']} {m['img']} px, batch {m['batch']}, N={m['classes']} prompts, "
          f"K={m['k']}, {prep['images']} training images, RandAugment {m['randaugment']}, Mixup/CutMix, "
          f"{m['workers']} loader workers, compiled {m['compile']}, {m['epochs']} epochs; "
          f"{device_name(torch.cuda.is_available())}; torch {torch.__version__}")
    print(f"(synthetic JPEGs written in {prep['jpeg_seconds']:.1f} s; store decoded once in "
          f"{prep['store_seconds']:.1f} s)")
    print("| cell | data path | prompts in training | training img/s (epochs 2+) | first epoch img/s | "
          "peak GPU memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['data']} | {r['prompts']} | {r['img_s']:.0f} | {r['first_epoch_img_s']:.0f} | "
              f"{'n/a (CPU)' if r['peak_gib'] != r['peak_gib'] else format(r['peak_gib'], '.2f')} |")


if __name__ == "__main__":
    main()
