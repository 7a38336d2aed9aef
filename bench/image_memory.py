"""Peak memory of ``ivit predict`` on four 12000x12000 PNGs (144 MP each, a few hundred KB on disk: smooth
gradients, two RGB and two greyscale), each source tree in a fresh process.

    PYTHONPATH=src python bench/image_memory.py                           # this checkout (src/)
    PYTHONPATH=src python bench/image_memory.py --baseline OTHER/src      # and another checkout, e.g. main's
    PYTHONPATH=src python bench/image_memory.py --side 6000 --work /tmp/m # smaller images; files kept for reruns
    PYTHONPATH=src python bench/image_memory.py --fidelity 4000           # whole vs reduced reads of a photo

The model is a tiny ViT at 224 px (one block, 32 wide, no prompts) trained for one epoch on a few generated
images (the model's size hardly matters: the images do). ``ivit predict RUN a.png b.png c.png d.png --device cpu``
runs in a child process that reports its resident memory right after the imports (``VmRSS``) and its peak at the
end (``ru_maxrss``), so the part the images cost is the difference. The predictions of the two trees are printed
side by side: with reduction while decoding they may differ in the last digits (the image the model sees is the
same picture, reduced by box filtering before the transform's antialiased resize).

Besides, ``--fidelity SIDE`` compares the model input of a real photograph enlarged to a shorter side of SIDE px
(matplotlib's sample ``grace_hopper.jpg``, saved as PNG and as JPEG quality 95) read whole and read reduced: the
largest and mean absolute difference of the 224-px input, in 8-bit pixel steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import instruction_vit.cli as cli, instruction_vit.api, torch, timm  # what `ivit predict` imports
after_imports = rss_mb()
import contextlib, io
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        cli.app(sys.argv[1:], standalone_mode=False)
    except SystemExit as stop:
        code = stop.code
print(json.dumps({"rss_after_imports_mb": after_imports,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "output": out.getvalue()}))
"""


def write_images(folder: Path, side: int) -> list[Path]:
    """Two RGB and two greyscale gradients of ``side`` x ``side``, as PNGs (compressible: small on disk)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ramp = (np.arange(side, dtype=np.float32) * (255.0 / max(1, side - 1))).astype(np.uint8)
    files = []
    for i in range(2):
        path = folder / f"rgb{i}.png"
        if not path.is_file():
            x = np.broadcast_to(ramp[None, :], (side, side))
            y = np.broadcast_to(ramp[:, None], (side, side))
            bands = [x, y, 255 - x] if i == 0 else [y, 255 - y, x]
            Image.merge("RGB", [Image.fromarray(np.ascontiguousarray(b)) for b in bands]).save(path)
        files.append(path)
    for i in range(2):
        path = folder / f"grey{i}.png"
        if not path.is_file():
            ramp2d = np.broadcast_to((ramp[None, :] if i == 0 else ramp[:, None]), (side, side))
            Image.fromarray(np.ascontiguousarray(ramp2d)).save(path)
        files.append(path)
    return files


def make_run(folder: Path, src: Path) -> Path:
    """A tiny 224-px ViT run (1 epoch on 24 generated images), trained by the tree at ``src`` (an older tree's run
    folder is readable by newer ones, not always the other way round)."""
    run = folder / "run"
    if (run / "checkpoints").is_dir():
        return run
    script = f"""
import numpy as np
from pathlib import Path
from PIL import Image
from instruction_vit.config import load_config
from instruction_vit.engine import train
root = Path({str(folder / "colours")!r})
rng = np.random.default_rng(0)
for name, colour in {{"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}}.items():
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(8):
        pixels = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / name / f"{{i}}.png")
cfg = load_config(None, ["data.dataset=folder", f"data.root={{root}}", "data.val_fraction=0.25", "data.img_size=224",
    "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", "train.device=cpu",
    "model.backbone_kwargs={{patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2}}", "train.epochs=1",
    "train.batch_size=8", "train.mixup=0", "train.cutmix=0", "train.tensorboard=false"])
train(cfg, {str(run)!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONPATH": str(src)},
                   stdout=subprocess.DEVNULL)
    return run


def measure(src: Path, run: Path, images: list[Path]) -> dict:
    """The child's figures for ``ivit predict`` from the tree at ``src``."""
    args = ["predict", str(run), *map(str, images), "--device", "cpu", "--top-k", "2"]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src)})
    if done.returncode != 0:
        raise SystemExit(f"predict with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fidelity(folder: Path, side: int) -> list[dict]:
    """How much the 224-px model input of a real photo enlarged to ``side`` changes when read reduced."""
    from matplotlib import cbook
    from PIL import Image

    from instruction_vit.data import eval_transform, read_image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    big = photo.resize((side, side * photo.height // photo.width), Image.LANCZOS)  # portrait: width is shorter
    transform = eval_transform(224, (0.5,) * 3, (0.5,) * 3)  # normalised x = (p/255 - 0.5) / 0.5
    rows = []
    for fmt, suffix, options in (("PNG", "png", {}), ("JPEG", "jpg", {"quality": 95})):
        path = folder / f"photo_{side}.{suffix}"
        if not path.is_file():
            big.save(path, fmt, **options)
        whole = transform(read_image(path))
        reduced_image = read_image(path, min_side=transform.min_side)
        reduced = transform(reduced_image)
        steps = ((whole - reduced).abs() * 0.5 * 255).numpy()  # in 8-bit pixel steps
        rows.append({"format": fmt, "size": f"{big.width}x{big.height}",
                     "read_at": "x".join(map(str, reduced_image.size)),
                     "max_step": float(steps.max()), "mean_step": float(steps.mean()),
                     "share_over_1_step": float((steps > 1).mean())})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=12000)
    parser.add_argument("--baseline", type=Path, help="another source tree (its src/) to measure the same way")
    parser.add_argument("--work", type=Path, help="folder for the images and the run (default: a temporary one)")
    parser.add_argument("--fidelity", type=int, metavar="SIDE", default=0,
                        help="also compare whole vs reduced reads of a photo enlarged to this shorter side")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        images = write_images(work / "images", args.side)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KB" for p in images)
        print(f"{len(images)} images of {args.side}x{args.side}: {sizes}")
        run = make_run(work, args.baseline or ROOT / "src")
        results = {}
        for name, src in (("baseline", args.baseline), ("this tree", ROOT / "src")):
            if src is None:
                continue
            r = measure(src, run, images)
            results[name] = r
            print(f"{name} ({src}): RSS after imports {r['rss_after_imports_mb']:.0f} MB, peak "
                  f"{r['peak_rss_mb']:.0f} MB (images: +{r['peak_rss_mb'] - r['rss_after_imports_mb']:.0f} MB)")
            print("  " + "\n  ".join(r["output"].strip().splitlines()))
        if args.fidelity:
            results["fidelity"] = fidelity(work, args.fidelity)
            for row in results["fidelity"]:
                print(f"fidelity {row['format']} {row['size']} read at {row['read_at']}: 224-px input differs by at "
                      f"most {row['max_step']:.2f} and on average {row['mean_step']:.3f} 8-bit steps "
                      f"({row['share_over_1_step']:.2%} of values by more than 1)")
    return results


if __name__ == "__main__":
    main()
