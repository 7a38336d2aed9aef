"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompt learning over a frozen CLIP.

Language prompts in the first J layers of CLIP's text tower (a learned context after ``[SOS]``, initialised from the
first tokens of "a photo of a", then a new set at the input of layers 1..J-1), and vision prompts in the first J
layers of the image tower that are not free parameters: each is a coupling function (a linear layer, text width ->
vision width) of the language prompts of the same layer. Paper defaults (official ``configs/trainers/MaPLe/
vit_b16_c2_ep5_batch4_2ctx.yaml``): J=9, 2 tokens; SGD lr 0.0035, 5 epochs, batch 4, 16 shots.

Options (``model.options.NAME=value``): ``n_ctx`` (prompt tokens per layer, 2), ``depth`` (J, 9) and ``ctx_init``
(the phrase whose first ``n_ctx`` tokens start the context, "a photo of a"; ``null``: random; see :mod:`.context`).

The couplings start as the official code's do: layer 0's (its ``proj``) initialised on its own, the deeper ones
(its ``compound_prompt_projections``) copies of a second, independent initialisation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError
from ..outputs import Capabilities, InstructionOutput, Prompts
from ..prompts.encoders.openclip import OpenCLIPEncoder
from . import EncoderMethod, register_method
from .context import PHOTO_PHRASE, clean_phrase
from .deep_prompts import (ClassTexts, check_depth, clip_logits, encode_image, encode_text, frozen_clip, layers_of,
                           load_clip, phrase_context, prompt_regime_only, text_tower, vision_tower)


class MaPLePrompts(nn.Module):
    """What MaPLe trains: the language context ``[n, text width]`` (layer 0), the deep language prompts of layers
    1..J-1, and J coupling functions (``coupling[0]`` maps the context, ``coupling[i]`` layer i's deep prompts)."""

    def __init__(self, context: Tensor, depth: int, text_width: int, vision_width: int):
        super().__init__()
        n = context.shape[0]
        self.context = nn.Parameter(context.detach().clone().float())
        # Drawn in the official order (context, layer 0's coupling, deep prompts, the deep couplings' one layer):
        first = nn.Linear(text_width, vision_width)  # the official `proj`: layer 0's coupling, on its own
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n, text_width) * 0.02) for _ in range(depth - 1)])
        deep = nn.Linear(text_width, vision_width)  # cloned for layers 1..J-1 (`_get_clones(single_layer, J - 1)`)
        self.coupling = nn.ModuleList([first] + [copy.deepcopy(deep) for _ in range(depth - 1)])

    def language(self) -> list[Tensor]:
        """The language prompts of layers 0..J-1."""
        return [self.context, *self.deep_text]

    def vision(self) -> list[Tensor]:
        """The vision prompts of layers 0..J-1: each layer's coupling of its language prompts."""
        return [coupling(prompts) for coupling, prompts in zip(self.coupling, self.language())]


class MaPLeModel(nn.Module):
    """The model protocol (:class:`~instruction_vit.model.MethodModel`) over CLIP + MaPLe's prompts (``scores``
    is ``[B, 0]``); only ``regime=prompt``."""

    #: It classifies by the class names' text; CLIP's frozen weights are rebuilt from prompts.encoder, left out of
    #: checkpoints.
    capabilities = Capabilities(reads_class_names=True, external_state=("clip.",))
    weights_report = None  # no timm backbone: its towers are the encoder's, named by external_weights_id

    def __init__(self, encoder: OpenCLIPEncoder, class_names: Sequence[str], n_ctx: int = 2, depth: int = 9,
                 ctx_init: str | None = PHOTO_PHRASE):
        super().__init__()
        clip = frozen_clip(encoder)
        tower, visual = text_tower(clip, "MaPLe"), vision_tower(clip, "MaPLe")
        check_depth(depth, min(layers_of(tower.transformer), layers_of(visual.transformer)), "shorter",
                    "model.options.depth")
        if depth < 1 or n_ctx < 1:
            raise ConfigError(f"MaPLe needs model.options.depth >= 1 and model.options.n_ctx >= 1 (got {depth}, "
                              f"{n_ctx})")
        self.tokenizer = encoder.tokenizer
        self.ctx_init = clean_phrase(ctx_init)  # stays in the class texts after the context (the official prompt)
        context = phrase_context(tower, self.tokenizer, self.ctx_init, n_ctx, "model.options.n_ctx")
        self.prompt_learner = MaPLePrompts(context, depth, tower.token_embedding.weight.shape[-1],
                                           visual.transformer.width)
        self.clip = clip
        self.set_classes(class_names)
        self.external_weights_id = encoder.weights_id()  # checked when a checkpoint is loaded into this model

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Classify among ``class_names``: the learned prompts are class-agnostic, they go with any names."""
        self.texts = ClassTexts(text_tower(self.clip, "MaPLe"), self.tokenizer, self.prompt_learner.context.shape[0],
                                class_names, self.ctx_init)
        self.num_classes = len(class_names)

    @property
    def backbone(self) -> nn.Module:
        return self.clip.visual  # not a second registered copy: the weights are saved once, under clip.*

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]:
        """``prompt``: the language context, the deep language prompts and the coupling functions (all MaPLe
        trains); other regimes are a :class:`ConfigError` (CLIP frozen, kept by reference)."""
        prompt_regime_only(regime, "MaPLe")
        return list(self.prompt_learner.parameters())

    def bank_prompts(self) -> None:
        return None

    def text_features(self) -> Tensor:
        """``[N, D]`` CLIP text features of the class prompts with the language prompts in the first J layers."""
        tower = text_tower(self.clip, "MaPLe")
        learner = self.prompt_learner
        return encode_text(tower, self.texts.embeddings(learner.context), self.texts.tokens, list(learner.deep_text))

    def image_features(self, images: Tensor) -> Tensor:
        """``[B, D]`` CLIP image features with the coupled vision prompts in the first J layers."""
        vision = self.prompt_learner.vision()
        return encode_image(self.clip.visual, images, vision[0], vision[1:])

    def forward(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput:
        if prompts is not None:
            raise ConfigError("MaPLe reads no instruction prompts (its prompts are learned); use prompts.kind=none "
                              "with model.method=maple")
        logits = clip_logits(self.clip, self.image_features(images), self.text_features())
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))


@dataclass
class MaPLeOptions:
    """MaPLe's own options (``model.options.NAME=value``)."""

    n_ctx: int = 2  # prompt tokens per layer, in both towers
    depth: int = 9  # J: the layers that get prompts (1: shallow MaPLe)
    ctx_init: str | None = PHOTO_PHRASE  # the phrase whose first n_ctx tokens start the context; None: random


@register_method("maple")
class MaPLeMethod(EncoderMethod):
    """MaPLe: language prompts in CLIP's first J text layers, vision prompts coupled to them, CLIP frozen."""

    Options = MaPLeOptions

    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> MaPLeModel:
        options = self.options(cfg)
        return MaPLeModel(load_clip(cfg, "maple"), class_names, options.n_ctx, options.depth, options.ctx_init)
