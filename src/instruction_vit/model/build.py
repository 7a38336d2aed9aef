"""Build an :class:`InstructionViT` from a timm model name and a weight source."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.models import VisionTransformer

from ..errors import ConfigError
from .prompted_vit import InstructionViT
from .plain import PlainModel
from .weights import Pretrained, load_weights, resolve_source


def build_model(
    backbone: str,
    num_classes: int,
    prompt_dim: int | Mapping[str, int] | None,
    pretrained: Pretrained = False,
    score_scale: float = 10.0,
    vpt_tokens: int = 0,
    vpt_deep: bool = False,
    **backbone_kwargs: Any,
) -> InstructionViT | PlainModel:
    """Create a timm ViT by name and wrap it as an Instruction-ViT: the model layer's factory, which the methods
    call. Users call it as :func:`instruction_vit.create_model` (the same model; ``prompt_dim`` by keyword).

    Args:
        backbone: any timm ViT name, e.g. ``"vit_base_patch16_224"``.
        num_classes: classes of the classification head.
        prompt_dim: feature dim of the prompt encoder (``int``), one dim per prompt source
            (``{"text": 384, "image": 1280}``) when the sources share no space, or ``None`` for a plain ViT.
        pretrained: weight source, see :data:`~.weights.Pretrained`. Every backbone tensor must load from it
            (else :class:`~instruction_vit.errors.WeightsError`); a head whose class count differs from
            ``num_classes`` is dropped (new random head), as timm does. What was loaded is attached to the
            returned model as ``weights_report`` (a :class:`~.weights.WeightsReport`, ``None`` for random init).
        score_scale: multiplier of the cosine scores.
        vpt_tokens, vpt_deep: visual prompt tokens of the VPT baseline (shallow or deep); 0 for none.
        backbone_kwargs: passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ...).
    """
    if num_classes <= 0:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"unknown backbone {backbone!r}{hint}")
    if prompt_dim is None:
        prompt_dims: dict[str, int] = {}
    elif isinstance(prompt_dim, Mapping):
        prompt_dims = {str(k): int(v) for k, v in prompt_dim.items()}
    else:
        prompt_dims = {"prompts": int(prompt_dim)}
    source = resolve_source(pretrained)
    try:
        net = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **backbone_kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(_unknown_kwargs_message(backbone, backbone_kwargs)) from None
    if not isinstance(net, VisionTransformer):
        if prompt_dims or vpt_tokens:
            raise ConfigError(f"{backbone} is not a timm VisionTransformer: prompts and VPT tokens join a ViT's token "
                              "sequence; pick a ViT (e.g. vit_base_patch16_224), or read no prompts "
                              "(prompts.kind=none, model.options.vpt_tokens=0) for a plain baseline")
        model = PlainModel(net)  # a baseline backbone without prompts (ResNet, EfficientNet, CaiT, PiT, ...)
    else:
        model = InstructionViT(net, prompt_dims, score_scale=score_scale, vpt_tokens=vpt_tokens, vpt_deep=vpt_deep)
    model.weights_report = load_weights(net, source, backbone)
    return model


def _unknown_kwargs_message(backbone: str, given: Mapping[str, Any]) -> str:
    """Which ``model.backbone_kwargs`` the timm model does not take, and the names it does (its class's arguments,
    read from a model built on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        cls = type(timm.create_model(backbone, pretrained=False))
    accepted = [n for n, p in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = [k for k in given if k not in accepted]
    hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, accepted, n=1)) else k
             for k in unknown]
    return (f"model.backbone_kwargs: {backbone} ({cls.__name__}) takes no {', '.join(hints) or 'such argument'}; "
            f"it takes: {', '.join(accepted)}")
