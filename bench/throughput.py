"""Training and evaluation throughput (img/s) and peak memory: plain ViT vs Instruction-ViT with all N prompts
vs K+1 selection, eager vs torch.compile, side by side in one run. Synthetic data already on the device.

    python bench/throughput.py --mode cpu            # the demo's model size (28 px, 4 blocks), batch 128
    python bench/throughput.py --mode gpu            # ViT-B/16, 224 px, batch 256, 102 classes, K=10, bf16

Each configuration runs in its own process so that peak memory (CPU: max RSS; GPU: max allocated) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from cells import device_name, run_cell

MODES = {
    "cpu": dict(backbone="vit_tiny_patch16_224", kwargs=dict(img_size=28, patch_size=7, embed_dim=128, depth=4,
                num_heads=4), img=28, batch=128, classes=10, k=3, prompt_dim=384, steps=20, warmup=3),
    "tiny": dict(backbone="vit_tiny_patch16_224", kwargs=dict(img_size=16, patch_size=4, embed_dim=32, depth=1,
                 num_heads=2), img=16, batch=8, classes=4, k=1, prompt_dim=8, steps=2, warmup=1),  # smoke run
    "gpu": dict(backbone="vit_base_patch16_224", kwargs={}, img=224, batch=256, classes=102, k=10, prompt_dim=512,
                steps=30, warmup=10),
}
VARIANTS = ("plain ViT", "all N prompts", "K+1 selection")


def measure(mode: str, variant: str, compiled: bool) -> dict:
    import torch

    from instruction_vit.losses import InstructionLoss
    from instruction_vit.model import build_model
    from instruction_vit.prompts import Prompts, forward_selected

    m = MODES[mode]
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    torch.manual_seed(0)
    prompt_dim = None if variant == "plain ViT" else m["prompt_dim"]
    model = build_model(m["backbone"], m["classes"], prompt_dim, **m["kwargs"]).to(device)
    prompts = Prompts.of(torch.randn(m["classes"], m["prompt_dim"], device=device)) if prompt_dim else None
    images = torch.randn(m["batch"], 3, m["img"], m["img"], device=device)
    labels = torch.randint(0, m["classes"], (m["batch"],), device=device)
    ranking = torch.randn(m["batch"], m["classes"], device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    criterion = InstructionLoss()
    net = torch.compile(model) if compiled else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def forward():
        if prompts is None:
            return net(images)
        if variant == "K+1 selection":
            return forward_selected(net, images, prompts, ranking, m["k"])
        return net(images, prompts)

    def train_step():
        with amp:
            loss = criterion(forward(), labels)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step():
        with amp:
            forward()

    def timed(fn, steps):
        for _ in range(m["warmup"]):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return m["batch"] * steps / (time.perf_counter() - start)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    train_ips = timed(train_step, m["steps"])
    model.eval()
    eval_ips = timed(eval_step, m["steps"])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    tokens = 1 + (m["img"] // model.backbone.patch_embed.patch_size[0]) ** 2
    tokens += {"plain ViT": 0, "all N prompts": m["classes"], "K+1 selection": m["k"] + 1}[variant]
    return {"variant": variant, "compiled": compiled, "tokens": tokens, "train_img_s": train_ips,
            "eval_img_s": eval_ips, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--compile", choices=("eager", "compiled", "both"), default="both",
                        help="which of eager and torch.compile to measure (default: both)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: VARIANT|compiled, in a fresh process
    args = parser.parse_args()
    if args.one:
        variant, compiled = args.one.split("|")
        print(json.dumps(measure(args.mode, variant, compiled == "1")))
        return
    import torch

    rows = [run_cell(__file__, "--mode", args.mode, "--one", f"{variant}|{int(compiled)}")
            for compiled in {"eager": (False,), "compiled": (True,), "both": (False, True)}[args.compile]
            for variant in VARIANTS]
    m = MODES[args.mode]
    print(f"mode {args.mode}: {m['backbone']} {m['img']} px, batch {m['batch']}, N={m['classes']} prompts, "
          f"K={m['k']}; {device_name(args.mode == 'gpu')}; torch {torch.__version__}")
    print("| variant | compiled | tokens | train img/s | eval img/s | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {'yes' if r['compiled'] else 'no'} | {r['tokens']} | {r['train_img_s']:.0f} | "
              f"{r['eval_img_s']:.0f} | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
