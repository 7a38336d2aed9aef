"""Instruction-ViT on a timm backbone (``model.method=instruction_vit``), and the baselines that are special cases
of it: plain fine-tuning (``prompts.kind=none``), VPT (``model.options.vpt_tokens``), the linear probe
(``model.regime=linear``), and any non-ViT timm backbone without prompts (a :class:`PlainModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..model import build_model
from . import Method, register_method


@dataclass
class InstructionViTOptions:
    """``model.options`` of ``model.method=instruction_vit``: the VPT baseline's visual prompts (Jia et al., ECCV
    2022), none by default."""

    vpt_tokens: int = 0  # learnable visual prompt tokens; 0: none
    vpt_deep: bool = False  # VPT-deep (new tokens before every block) instead of VPT-shallow (input only)


@register_method("instruction_vit")
class InstructionViTMethod(Method):
    """Instruction-ViT on a timm ViT; also plain fine-tuning, VPT, the linear probe and any timm backbone."""

    Options = InstructionViTOptions

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        options = super().resolve_options(given)
        if options["vpt_tokens"] < 0:
            raise ConfigError(f"model.options.vpt_tokens={options['vpt_tokens']}: a count of visual prompt tokens "
                              "(0: none)")
        return options

    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> nn.Module:
        options = self.options(cfg)
        source = cfg.model.pretrained if pretrained is None else pretrained
        source = True if isinstance(source, str) and source == "timm" else source
        kwargs = {"img_size": cfg.data.img_size, **cfg.model.backbone_kwargs}
        pretrained_cfg = timm.models.get_pretrained_cfg(cfg.model.backbone)
        if pretrained_cfg is not None and not pretrained_cfg.fixed_input_size:
            kwargs.pop("img_size")  # CNNs take any input size (and refuse the argument)
        return build_model(cfg.model.backbone, len(class_names), prompt_dim, pretrained=source,
                           score_scale=cfg.model.score_scale, vpt_tokens=options.vpt_tokens,
                           vpt_deep=options.vpt_deep, **kwargs)
