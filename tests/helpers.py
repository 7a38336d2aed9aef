"""Small data the tests generate."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

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


# -- OpenAI-format CLIP archives (TorchScript), clean and armed ----------------------------------------------------
OPENAI_TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
TEXTS = ["a photo of a dog.", "a diagram of a tax form.", "a blurry photo of a sneaker."]


def save_openai_archive(state: dict, path: Path, modules: dict | None = None) -> Path:
    """A TorchScript archive whose state_dict is ``state`` under OpenAI's key names, saved with torch.jit.save
    (with the non-weight entries OpenAI's archives carry), i.e. the format of OpenAI's ``ViT-B-16.pt``.
    ``modules``: more submodules of the root (name -> module; test_archive_as_data's hostile ones)."""

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if part not in module._modules:
                module.add_module(part, Holder())
            module = module._modules[part]
        module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    for key, value in (("input_resolution", 32), ("context_length", 16), ("vocab_size", 49408)):
        root.register_buffer(key, torch.tensor(value))
    for name, module in (modules or {}).items():
        root.add_module(name, module)
    torch.jit.save(torch.jit.script(root), path)
    return path


class Trap(nn.Module):
    """A module whose TorchScript ``__setstate__`` creates the file ``marker`` whenever torch.jit.load restores it
    (``torch.from_file(shared=True)`` maps the file read-write, creating it)."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = str(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        written = torch.from_file(self.marker, shared=True, size=8)
        self.training = state[1] and written.numel() == 8  # the result is used, so TorchScript keeps the call


def armed_archive(folder: Path) -> tuple[Path, Path]:
    """A tiny OpenAI-layout CLIP archive carrying a :class:`Trap`, and the marker file ``torch.jit.load`` on it
    creates (checked here: the trap is armed; the marker is removed again)."""
    import torch
    from open_clip.model import CLIP, convert_weights_to_fp16

    torch.manual_seed(0)
    model = CLIP(**OPENAI_TINY, quick_gelu=True)
    convert_weights_to_fp16(model)
    marker = folder / "marker"
    archive = save_openai_archive({k: v.clone() for k, v in model.state_dict().items()}, folder / "tiny-openai.pt",
                                  modules={"trap": Trap(marker)})
    torch.jit.load(archive)  # the unsafe loader, on a file the test made: the trap is armed
    assert marker.exists()
    marker.unlink()
    return archive, marker


def tiny_spec_base(root: Path, epochs: int = 1, **sections: dict) -> dict:
    """The ``base`` of a tiny experiment spec on the colour folder ``root``: 16-px images, a 1-block ViT, a few CPU
    steps per epoch, no prompts (``sections`` replace or add whole sections: ``prompts={...}``)."""
    return {"data": {"dataset": "folder", "root": str(root), "val_fraction": 0.25, "img_size": 16, "num_workers": 0,
                     "randaugment": None},
            "prompts": {"kind": "none"},
            "model": {"backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}},
            "train": {"epochs": epochs, "batch_size": 8, "lr": 0.003, "warmup_epochs": 0.5, "mixup": 0, "cutmix": 0,
                      "device": "cpu"},
            **sections}

