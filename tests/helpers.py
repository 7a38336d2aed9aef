"""Small data the tests generate."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def colour_folder(root: Path, per_class: int = 16, colours: dict | None = None, size: int = 16) -> Path:
    """An image folder whose classes are noisy solid colours: learnable in a few steps by a tiny ViT."""
    rng = np.random.default_rng(0)
    for name, colour in (colours or COLOURS).items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def tiny_run(image_root: Path, clip_dir: Path, cache: Path, *overrides: str):
    """A few-second run config: a 1-block ViT on 16-px colour images, text prompts from the tiny CLIP; resolved (the
    kind's options filled in), as a run records it."""
    from instruction_vit.api import load_config

    return load_config(None, [
        "data.dataset=folder", f"data.root={image_root}", "data.val_fraction=0.25", "data.img_size=16",
        "data.randaugment=null", "data.num_workers=0", "prompts.kind=text",
        f"prompts.encoder=open_clip:local-dir:{clip_dir}", "prompts.templates=photo", f"prompts.cache_dir={cache}",
        "model.backbone_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "train.batch_size=8", "train.lr=0.003", "train.warmup_epochs=0.5", "train.mixup=0", "train.cutmix=0",
        *overrides,
    ])


HF_REV = "0123456789abcdef0123456789abcdef01234567"


def fill_hf_cache(cache: Path, repo: str, files: dict, rev: str = HF_REV) -> Path:
    """Lay ``files`` out as huggingface_hub does (``models--ORG--NAME/{refs/main, snapshots/REV/...}``): name -> a
    path (copied), bytes, a state dict (for ``.safetensors``) or a dict (written as JSON). Returns the snapshot."""
    from safetensors.torch import save_file

    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    snapshot = root / "snapshots" / rev
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    for filename, content in files.items():
        if isinstance(content, Path):
            (snapshot / filename).write_bytes(content.read_bytes())
        elif isinstance(content, bytes):
            (snapshot / filename).write_bytes(content)
        elif filename.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in content.items()}, snapshot / filename)
        else:
            (snapshot / filename).write_text(json.dumps(content))
    return snapshot


#: A CLIP with 3 layers per tower and different widths (text 24, vision 32): deep prompts and couplings need both.
DEEP_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 3},
}


def save_clip(folder: Path, cfg: dict) -> str:
    """A random CLIP (seed 0) with ``cfg`` saved as an open_clip local dir (open_clip_config.json + safetensors);
    returns its encoder spec."""
    import json

    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CLIP(**cfg)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"size": 32}}))
    return f"open_clip:local-dir:{folder}"
