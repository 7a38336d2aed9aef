"""Prompt encoders and :func:`load_encoder`, which builds one from its spec string."""

from __future__ import annotations

import torch

from ...files import file_sha256
from .base import IMAGE, TEXT, ImagePreprocess, PromptEncoder
from .identity import weights_id

ENCODER_SPECS = (
    "minilm",                                  # text: all-MiniLM-L6-v2 (offline, 384-d)
    "efficientnet-lite0[@SIZE]",               # image: ImageNet EfficientNet-Lite0 (offline, 1280-d)
    "conse[@SIZE]",                            # joint: ConSE over the two above (offline, 384-d)
    "open_clip:MODEL[@PRETRAINED]",            # joint: CLIP, PRETRAINED a tag (activation from the tag: openai ->
                                               # QuickGELU), OpenAI's TorchScript .pt (QuickGELU; MODEL a label that
                                               # must fit if built-in) or a state dict file (as MODEL says: QuickGELU
                                               # weights need MODEL-quickgelu)
    "open_clip:local-dir:/path/to/folder",     # joint: open_clip_config.json + weights in a folder
    "open_clip:hf-hub:ORG/NAME",               # joint: the same from a Hugging Face repo (offline: from the cache)
)


def load_encoder(spec: str, device: str | torch.device = "cpu") -> PromptEncoder:
    """Build a prompt encoder from its spec (see :data:`ENCODER_SPECS`)."""
    kind, _, arg = spec.partition(":")
    base, _, option = kind.partition("@")
    if kind == "open_clip" and arg:
        from .openclip import OpenCLIPEncoder

        if arg.startswith(("local-dir:", "hf-hub:")):  # the whole rest is the folder / repo ('@' included)
            return OpenCLIPEncoder(arg, device=device)
        model_name, _, pretrained = arg.partition("@")
        return OpenCLIPEncoder(model_name, pretrained or None, device=device)
    if not arg and base == "minilm" and not option:
        from .minilm import MiniLMTextEncoder

        return MiniLMTextEncoder(device=device)
    if not arg and base == "efficientnet-lite0":
        from .efficientnet import EfficientNetLiteEncoder

        return EfficientNetLiteEncoder(device=device, image_size=_int_option(spec, option, 224))
    if not arg and base == "conse":
        from .conse import ConSEEncoder

        return ConSEEncoder(device=device, image_size=_int_option(spec, option, 224))
    raise ValueError(f"unknown prompt encoder {spec!r}; use one of: {', '.join(ENCODER_SPECS)}")


def joint_space(spec: str) -> bool:
    """Whether the encoder ``spec`` names embeds images and texts in one space (without loading it)."""
    kind = spec.partition(":")[0].partition("@")[0]
    if kind not in ("minilm", "efficientnet-lite0", "conse", "open_clip"):
        raise ValueError(f"unknown prompt encoder {spec!r}; use one of: {', '.join(ENCODER_SPECS)}")
    return kind in ("conse", "open_clip")


def _int_option(spec: str, option: str, default: int) -> int:
    if not option:
        return default
    if not option.isdigit():
        raise ValueError(f"prompt encoder {spec!r}: the part after '@' must be a whole number")
    return int(option)


__all__ = ["ENCODER_SPECS", "IMAGE", "TEXT", "ImagePreprocess", "PromptEncoder", "file_sha256", "joint_space", "load_encoder", "weights_id"]
