"""Build an :class:`InstructionViT` from a timm model name and a weight source."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import timm
import torch
from timm.models import VisionTransformer
from safetensors import safe_open

from ..errors import WeightsUnavailableError
from .instruction_vit import InstructionViT
from .plain import PlainClassifier

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")

#: ``False``/``None``: random init; ``True``: timm's own sources (needs network or a warm cache);
#: a path: a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict or a JAX ``.npz``;
#: a mapping: the backbone's state dict itself.
Pretrained = Union[bool, str, Path, Mapping[str, torch.Tensor], None]


def build_model(
    backbone: str,
    num_classes: int,
    prompt_dim: int | Mapping[str, int] | None,
    pretrained: Pretrained = False,
    score_scale: float = 10.0,
    vpt_tokens: int = 0,
    vpt_deep: bool = False,
    **backbone_kwargs: Any,
) -> InstructionViT | PlainClassifier:
    """Create a timm ViT by name and wrap it as an Instruction-ViT.

    Args:
        backbone: any timm ViT name, e.g. ``"vit_base_patch16_224"``.
        num_classes: classes of the classification head.
        prompt_dim: feature dim of the prompt encoder (``int``), one dim per prompt source
            (``{"text": 384, "image": 1280}``) when the sources share no space, or ``None`` for a plain ViT.
        pretrained: weight source, see :data:`Pretrained`. A head whose class count differs from
            ``num_classes`` is dropped (new random head), as timm does.
        score_scale: multiplier of the cosine scores.
        vpt_tokens, vpt_deep: visual prompt tokens of the VPT baseline (shallow or deep); 0 for none.
        backbone_kwargs: passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ...).
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ValueError(f"unknown backbone {backbone!r}{hint}")
    if prompt_dim is None:
        prompt_dims: dict[str, int] = {}
    elif isinstance(prompt_dim, Mapping):
        prompt_dims = {str(k): int(v) for k, v in prompt_dim.items()}
    else:
        prompt_dims = {"prompts": int(prompt_dim)}
    try:
        net = timm.create_model(backbone, num_classes=num_classes, **_weight_kwargs(pretrained), **backbone_kwargs)
        if isinstance(getattr(net, "pretrained_cfg", None), dict):
            net.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights alive
    except OSError as err:  # hub unreachable, nothing cached (huggingface_hub / urllib errors)
        if pretrained is not True:
            raise
        raise WeightsUnavailableError(
            f"could not fetch pretrained weights for {backbone!r} from timm's sources ({type(err).__name__}); "
            "offline, download them elsewhere and pass pretrained=/path/to/weights.safetensors"
        ) from err
    if not isinstance(net, VisionTransformer) and not prompt_dims and not vpt_tokens:
        return PlainClassifier(net)  # a baseline backbone without prompts (ResNet, EfficientNet, CaiT, PiT, ...)
    return InstructionViT(net, prompt_dims, score_scale=score_scale, vpt_tokens=vpt_tokens, vpt_deep=vpt_deep)


def _weight_kwargs(pretrained: Pretrained) -> dict[str, Any]:
    if pretrained is None or pretrained is False:
        return {"pretrained": False}
    if pretrained is True:
        return {"pretrained": True}
    if isinstance(pretrained, Mapping):
        head = pretrained.get("head.weight")
        return {"pretrained": True, "pretrained_cfg_overlay": {
            "state_dict": dict(pretrained), "num_classes": int(head.shape[0]) if head is not None else -1}}
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file not found: {path}; pass an existing .safetensors/.pth/.npz file, "
            "pretrained=True for timm's own sources, or pretrained=False for random init"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"cannot read weights from {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
    overlay: dict[str, Any] = {"file": str(path), "custom_load": path.suffix == ".npz"}
    head_rows = _head_rows(path)
    # timm drops the head when the checkpoint's class count differs from the model's; tell it the
    # count the file really has, not the count of the default weights.
    overlay["num_classes"] = head_rows if head_rows is not None else -1
    return {"pretrained": True, "pretrained_cfg_overlay": overlay}


def _head_rows(path: Path) -> int | None:
    """Rows of ``head.weight`` in a state-dict file, without loading every tensor when avoidable."""
    if path.suffix == ".npz":
        return None
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return f.get_slice("head.weight").get_shape()[0] if "head.weight" in f.keys() else None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    weight = state.get("head.weight") if isinstance(state, dict) else None
    return int(weight.shape[0]) if weight is not None else None
