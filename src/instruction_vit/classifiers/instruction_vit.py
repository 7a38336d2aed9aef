"""Instruction-ViT on a timm backbone (``model.method=instruction_vit``), and the baselines that are special cases
of it: plain fine-tuning (``prompts.kind=none``), VPT (``model.vpt_tokens``), the linear probe
(``model.regime=linear``), and any non-ViT timm backbone without prompts (a :class:`PlainClassifier`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
from torch import nn

from ..config import Config
from ..model import build_model
from . import ClassifierKind, register_classifier


@register_classifier("instruction_vit")
class InstructionViTKind(ClassifierKind):
    """Instruction-ViT on a timm ViT; also plain fine-tuning, VPT, the linear probe and any timm backbone."""

    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> nn.Module:
        source = cfg.model.pretrained if pretrained is None else pretrained
        source = True if isinstance(source, str) and source == "timm" else source
        kwargs = {"img_size": cfg.data.img_size, **cfg.model.backbone_kwargs}
        pretrained_cfg = timm.models.get_pretrained_cfg(cfg.model.backbone)
        if pretrained_cfg is not None and not pretrained_cfg.fixed_input_size:
            kwargs.pop("img_size")  # CNNs take any input size (and refuse the argument)
        return build_model(cfg.model.backbone, len(class_names), prompt_dim, pretrained=source,
                           score_scale=cfg.model.score_scale, vpt_tokens=cfg.model.vpt_tokens,
                           vpt_deep=cfg.model.vpt_deep, **kwargs)
