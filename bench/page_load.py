"""The demo page under load: ``ivit serve`` on a tiny run, a burst of concurrent visitors, each with its own image and
a set of class names (half of the sets new to the page, half seen before), through gradio's own client.

    python bench/page_load.py                       # 40 at once, a queue of 64: every request is served
    python bench/page_load.py --queue-size 8        # the default limits' behaviour when more arrive than wait
    python bench/page_load.py --encoder conse@64    # the demo's offline encoder instead of a random tiny CLIP

Prints the latency of each served request (p50/p95, from submit to answer), the burst's throughput, how many were
told the queue is full, the server's peak resident memory (``VmHWM`` of its process, loading included) and whether
any file appeared in the prompt cache, the run folder or gradio's upload folder. The run is trained here, in a
temporary folder, as the tests make theirs (a 1-block ViT on 16-px colour images, one epoch). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
#: A random CLIP small enough to load in a second: the page's costs, not a big encoder's, are measured.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
WORDS = ["cat", "dog", "boat", "car", "tree", "house", "bird", "fish", "lamp", "chair", "cup", "book", "shoe", "hat",
         "bike", "train", "plane", "horse", "apple", "bread", "clock", "phone", "kite", "drum"]


def save_tiny_clip(folder: Path) -> str:
    """A random tiny CLIP (seed 0) as an open_clip local dir; returns its encoder spec."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {"size": 32}}))
    return f"open_clip:local-dir:{folder}"


def noisy_png(path: Path, colour: tuple[int, int, int], size: int, seed: int) -> Path:
    """A noisy solid-colour PNG (noise keeps it from compressing to nothing)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def train_tiny_run(root: Path, encoder: str) -> Path:
    """A one-epoch run on 16-px colour images with text prompts from ``encoder`` (a top-2+1 ranker)."""
    import instruction_vit as ivit
    from instruction_vit.config import load_config

    for name, colour in COLOURS.items():
        (root / "images" / name).mkdir(parents=True)
        for i in range(8):
            noisy_png(root / "images" / name / f"{i}.png", colour, 16, i)
    config = load_config(None, [
        "data.dataset=folder", f"data.root={root / 'images'}", "data.val_fraction=0.25", "data.img_size=16",
        "data.randaugment=null", "data.num_workers=0", "prompts.kind=text", f"prompts.encoder={encoder}",
        "prompts.templates=photo", f"prompts.cache_dir={root / 'cache'}", "prompts.select_k=2",
        "model.backbone_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "train.batch_size=8", "train.lr=0.003", "train.warmup_epochs=0.5", "train.mixup=0", "train.cutmix=0",
        "train.epochs=1",
    ])
    ivit.train(config, root / "run")
    return root / "run"


def files(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots if root.exists()
            for p in root.rglob("*") if p.is_file()}


def memory_kib(pid: int, field: str) -> int:
    """``VmHWM`` (peak resident) or ``VmRSS`` of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def start_server(run: Path, uploads: Path, queue_size: int, log: Path) -> tuple[subprocess.Popen, str]:
    """``ivit serve RUN`` on a free loopback port, gradio's files in ``uploads``; returns it once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_TEMP_DIR=str(uploads), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "instruction_vit", "serve", str(run), "--host", "127.0.0.1",
                               "--port", str(port), "--device", "cpu", "--queue-size", str(queue_size)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        if server.poll() is not None:
            raise RuntimeError(f"ivit serve ended: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return server, url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"ivit serve did not answer: {log.read_text()}")


def burst(url: str, images: list[Path], name_sets: list[list[str]]) -> tuple[list[float], list[str], float]:
    """One request per image, all at once (a thread each, one client): latencies of the served ones, the errors
    of the others, and the burst's wall time."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, analytics_enabled=False, download_files=False, max_workers=len(images))
    latencies, errors, lock, go = [], [], threading.Lock(), threading.Barrier(len(images) + 1)

    def visit(image: Path, names: list[str]) -> None:
        go.wait()
        start = time.perf_counter()
        try:
            client.predict(handle_file(str(image)), ", ".join(names), False, api_name="/classify")
        except Exception as err:  # noqa: BLE001 - a refused request is counted, not fatal
            with lock:
                errors.append(str(err).splitlines()[0][:120])
            return
        with lock:
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=visit, args=(image, names)) for image, names in zip(images, name_sets)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    client.close()
    return latencies, errors, wall


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="concurrent visitors")
    parser.add_argument("--new-sets", type=int, default=20, help="distinct class-name sets among them (the rest repeat)")
    parser.add_argument("--queue-size", type=int, default=64, help="ivit serve --queue-size")
    parser.add_argument("--image-size", type=int, default=224, help="side of each visitor's PNG")
    parser.add_argument("--encoder", default="tiny-clip", help="tiny-clip (random, written here) or an encoder spec")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="page-load-") as tmp:
        root = Path(tmp)
        encoder = save_tiny_clip(root / "clip") if args.encoder == "tiny-clip" else args.encoder
        run = train_tiny_run(root, encoder)
        uploads, log = root / "gradio", root / "serve.log"
        images = [noisy_png(root / f"visitor-{i}.png", list(COLOURS.values())[i % 3], args.image_size, 100 + i)
                  for i in range(args.requests)]
        name_sets = [[f"a {WORDS[(j + n) % len(WORDS)]} {j}" for n in range(2 + j % 4)]
                     for j in (i % args.new_sets for i in range(args.requests))]
        server, url = start_server(run, uploads, args.queue_size, log)
        try:
            burst(url, images[:1], [sorted(COLOURS)])  # warm: the checkpoint's own classes, one request
            before = files(root / "cache", run)
            rss_before = memory_kib(server.pid, "VmRSS")
            latencies, errors, wall = burst(url, images, name_sets)
            time.sleep(0.5)
            peak, rss_after = memory_kib(server.pid, "VmHWM"), memory_kib(server.pid, "VmRSS")
            written = sorted(set(files(root / "cache", run)) ^ set(before)) + \
                [f for f, stat in files(root / "cache", run).items() if before.get(f, stat) != stat]
            left = files(uploads)
        finally:
            server.terminate()
            server.wait(timeout=30)
        tracebacks = log.read_text().count("Traceback")

    print(f"page load: {args.requests} concurrent requests ({args.new_sets} distinct class-name sets, "
          f"{args.image_size}-px PNGs), queue size {args.queue_size}, encoder {args.encoder}, "
          f"{os.cpu_count()} CPUs")
    if latencies:
        print(f"served {len(latencies)}: latency p50 {percentile(latencies, 50):.2f} s, p95 "
              f"{percentile(latencies, 95):.2f} s, max {max(latencies):.2f} s; throughput "
              f"{len(latencies) / wall:.1f} requests/s ({wall:.1f} s for the burst)")
    print(f"refused {len(errors)}" + (f" ({sorted(set(errors))[0]})" if errors else ""))
    print(f"server memory: resident {rss_before / 1024:.0f} MiB before the burst, {rss_after / 1024:.0f} MiB after; "
          f"peak {peak / 1024:.0f} MiB")
    print(f"files written into the prompt cache or the run folder: {len(written)}; uploads left in gradio's folder: "
          f"{len(left)}; tracebacks on the server console: {tracebacks}")


if __name__ == "__main__":
    main()
