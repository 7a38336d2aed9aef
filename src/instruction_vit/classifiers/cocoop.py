"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context conditioned on each image.

A small meta-network (``Linear(D, D // 16)``-ReLU-``Linear(D // 16, W)``, D the image-feature dim, W the text
width) turns each image's normalised image feature into one token π, added to every context vector:
``v_m(x) = v_m + π(x)``. Each image thus gets its own class prompts, text features and logits. Trained: the
context and the meta-network, nothing else (as the official ``trainers/cocoop.py`` of KaiyangZhou/CoOp, whose
defaults are: context "a photo of a" (4 vectors), SGD lr 0.002, 10 epochs, batch size 1, 16 shots, cosine
schedule with one constant warm-up epoch at 1e-5).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..outputs import InstructionOutput, Prompts
from . import register_classifier
from .coop import CoOpFamily, CoOpFamilyKind


class CoCoOpClassifier(CoOpFamily):
    """CoCoOp: the learned context plus a meta-network token from each image, over frozen towers."""

    method = "CoCoOp"

    def __init__(self, encoder: Any, class_names: Sequence[str], context_length: int = 16,
                 init: str | None = "a photo of a"):
        super().__init__(encoder, class_names, context_length, init)
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


@register_classifier("cocoop")
class CoCoOpKind(CoOpFamilyKind):
    """CoCoOp: CoOp's context plus a meta-network token from each image (CLIP or, offline, ConSE)."""

    model_class = CoCoOpClassifier
