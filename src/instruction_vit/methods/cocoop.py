"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context conditioned on each image.

A small meta-network (``Linear(D, D // 16)``-ReLU-``Linear(D // 16, W)``, D the image-feature dim, W the text
width) turns each image's normalised image feature into one token π, added to every context vector:
``v_m(x) = v_m + π(x)``. Each image thus gets its own class prompts, text features and logits. Trained: the
context and the meta-network, nothing else (as the official ``trainers/cocoop.py`` of KaiyangZhou/CoOp, whose
configs are: context "a photo of a" (4 vectors), SGD lr 0.002, 10 epochs, batch size 1, 16 shots, cosine
schedule with one constant warm-up epoch at 1e-5).

Options (:class:`CoCoOpOptions`): CoOp's ``n_ctx`` and ``ctx_init``, with the paper's context as the default: the
phrase "a photo of a", one vector per word (every config the official scripts name, ``*_ctxv1``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..outputs import InstructionOutput, Prompts
from . import register_method
from .context import PHOTO_PHRASE
from .coop import CoOpFamily, CoOpFamilyMethod, CoOpOptions


class CoCoOpModel(CoOpFamily):
    """CoCoOp: the learned context plus a meta-network token from each image, over frozen towers."""

    method = "CoCoOp"

    def __init__(self, encoder: Any, class_names: Sequence[str], n_ctx: int | None = None,
                 ctx_init: str | None = PHOTO_PHRASE):
        super().__init__(encoder, class_names, n_ctx, ctx_init)
        vis_dim, width = self.image_tower.dim, self.text_tower.width
        hidden = max(1, vis_dim // 16)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, width)),
        ]))

    def trainable_modules(self) -> list[nn.Module]:
        return [self.prompt_embed, self.meta_net]

    def image_context(self, image: Tensor) -> Tensor:
        """``[B, M, W]``: the context for each of the normalised image features ``[B, D]``."""
        token = self.meta_net(image)  # π(x): [B, W]
        return self.prompt_embed.context.unsqueeze(0) + token.unsqueeze(1)

    def forward(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput:
        self._check_no_prompts(prompts)
        image = self.image_features(images)
        logits = self.scaled_cosine(image, self.text_features(self.image_context(image)))
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))


@dataclass
class CoCoOpOptions(CoOpOptions):
    """``model.options`` of ``model.method=cocoop``: CoOp's, with the CoCoOp paper's context as the default."""

    ctx_init: str | None = PHOTO_PHRASE  # 4 context vectors from "a photo of a" (the official ctxv1 configs)


@register_method("cocoop")
class CoCoOpMethod(CoOpFamilyMethod):
    """CoCoOp: CoOp's context plus a meta-network token from each image (CLIP or, offline, ConSE)."""

    model_class = CoCoOpModel
    Options = CoCoOpOptions
