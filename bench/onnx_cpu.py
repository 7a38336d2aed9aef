"""Inference images/s on this CPU: ONNX Runtime vs PyTorch eager, the same model, batch and thread count, one run
side by side. Random weights (the speed does not depend on them); the prompts are baked into the graph, as
``ivit export`` writes it by default, and the export passes its parity check first.

    python bench/onnx_cpu.py                 # the demo model (28 px, 4 blocks, 10 prompts) and ViT-B/16 at 224 px
    python bench/onnx_cpu.py --models demo   # one of them; --threads N for both runtimes (default: torch's)

Each model is timed ``--repeats`` times in alternation (PyTorch, ONNX Runtime, PyTorch, ...) and the best of each
is kept: other work on the machine only ever slows a measurement down.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

MODELS = {
    # Instruction-ViT as `ivit demo` builds it (configs/demo.yaml): 28 px Fashion-MNIST, 10 text prompts of 384 dims.
    "demo": dict(backbone="vit_tiny_patch16_224", kwargs=dict(img_size=28, patch_size=7, embed_dim=128, depth=4,
                 num_heads=4), img=28, classes=10, prompt_dim=384, batch=128, steps=10),
    "vit_b16": dict(backbone="vit_base_patch16_224", kwargs={}, img=224, classes=10, prompt_dim=512, batch=8,
                    steps=3),
    "tiny": dict(backbone="vit_tiny_patch16_224", kwargs=dict(img_size=16, patch_size=8, embed_dim=32, depth=1,
                 num_heads=2), img=16, classes=3, prompt_dim=8, batch=4, steps=2),  # the smoke test's
}


def measure(name: str, repeats: int = 3, threads: int | None = None) -> dict:
    """One model's row: images/s of PyTorch eager and ONNX Runtime (best of ``repeats``), and the export's parity."""
    import onnxruntime as ort
    import torch

    from instruction_vit.artifacts.export import export_model_onnx
    from instruction_vit.model import build_model
    from instruction_vit.outputs import Prompts

    m = MODELS[name]
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(m["backbone"], m["classes"], m["prompt_dim"], **m["kwargs"]).eval()
    model.set_prompt_bank(Prompts.of(torch.randn(m["classes"], m["prompt_dim"])))
    images = torch.randn(m["batch"], 3, m["img"], m["img"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        export = export_model_onnx(model, path, class_names=[f"c{i}" for i in range(m["classes"])], img_size=m["img"])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": images.numpy()}
    bank = model.bank_prompts()

    @torch.no_grad()
    def pytorch() -> None:
        model(images, bank)

    def onnxruntime() -> None:
        session.run(None, feed)

    def rate(fn) -> float:
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(m["steps"]):
            fn()
        return m["batch"] * m["steps"] / (time.perf_counter() - start)

    best = {"pytorch": 0.0, "onnxruntime": 0.0}
    for _ in range(repeats):
        best["pytorch"] = max(best["pytorch"], rate(pytorch))
        best["onnxruntime"] = max(best["onnxruntime"], rate(onnxruntime))
    return {"model": name, "batch": m["batch"], "threads": threads, "pytorch_img_s": best["pytorch"],
            "onnxruntime_img_s": best["onnxruntime"], "ratio": best["onnxruntime"] / best["pytorch"],
            "max_abs_diff": export.max_abs_diff}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["demo", "vit_b16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per runtime; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: torch's)")
    args = parser.parse_args(argv)
    import onnxruntime
    import torch

    rows = [measure(name, args.repeats, args.threads) for name in args.models]
    print(f"CPU, {rows[0]['threads']} threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"best of {args.repeats}")
    print("| model | batch | PyTorch eager img/s | ONNX Runtime img/s | ORT / PyTorch | export max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        m = MODELS[r["model"]]
        label = f"{r['model']} ({m['backbone']}, {m['img']} px, {m['classes']} prompts)"
        print(f"| {label} | {r['batch']} | {r['pytorch_img_s']:.1f} | {r['onnxruntime_img_s']:.1f} | "
              f"{r['ratio']:.2f}x | {r['max_abs_diff']:.1e} |")
    return rows


if __name__ == "__main__":
    main()
