"""KgCoOp (Yao et al., CVPR 2023): CoOp with its class text features kept near the hand-crafted prompt's.

The extra loss is ``weight * (1 - mean_i cos(w_i, w_i^clip))`` over the N classes, with ``w_i`` the class text
feature from the learned context and ``w_i^clip`` the frozen text tower's feature of the hand-crafted prompt
(one template, no ensemble). For unit vectors this is ``weight / 2 * mean_i ||w_i - w_i^clip||^2``: the paper's
``lambda * mean ||.||^2`` with the factor 1/2 of the official code (``trainers/kgcoop.py`` of htyao89/KgCoOp, whose
``W=8.0`` is this ``weight``), so the paper's lambda carries over as it was tuned. Trained: the context alone.

The hand-crafted prompt is the data set's CoOp template (as the official ``CUSTOM_TEMPLATES``; ``"a photo of a
{}."`` for data sets without one), or the ``template`` option. The official defaults: context "a photo of a" (4
vectors), SGD lr 0.002, 100 epochs, batch size 128, 16 shots (4 for cross-data transfer), cosine schedule with one
constant warm-up epoch at 1e-5, weight 8.0.

Options (:class:`KgCoOpOptions`): ``weight``, ``template``, and CoOp's ``n_ctx`` and ``ctx_init``. The official code
hard-codes the phrase "a photo of a" whenever an initial phrase is set at all (``CTX_INIT``'s words are not read);
here ``ctx_init`` is read, and its default is that phrase, so the default is the official context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..data.templates import check_templates, class_text
from ..outputs import InstructionOutput, Prompts
from . import register_method
from .context import PHOTO_PHRASE
from .coop import CoOpFamily, CoOpFamilyMethod, CoOpOptions

DEFAULT_TEMPLATE = "a photo of a {}."


class KgCoOpModel(CoOpFamily):
    """KgCoOp: CoOp plus a loss pulling each class text feature towards its hand-crafted prompt's (in ``aux``)."""

    method = "KgCoOp"

    def __init__(self, encoder: Any, class_names: Sequence[str], n_ctx: int | None = None,
                 ctx_init: str | None = PHOTO_PHRASE, weight: float = 8.0, template: str = DEFAULT_TEMPLATE):
        super().__init__(encoder, class_names, n_ctx, ctx_init)
        self.weight = float(weight)
        self.template = check_templates([template], source="KgCoOp's template")[0]
        self._encode_hand_crafted()

    def set_classes(self, class_names: Sequence[str]) -> None:
        """As :meth:`CoOpFamily.set_classes`, and the hand-crafted prompts' features of the new names."""
        super().set_classes(class_names)
        if hasattr(self, "template"):  # not while the base class is being built
            self._encode_hand_crafted()

    def _encode_hand_crafted(self) -> None:
        with torch.no_grad():
            feats = self.text_tower.encode_text([self.template.format(class_text(name)) for name in self.class_names])
        self.register_buffer("hand_crafted", F.normalize(feats.float(), dim=-1), persistent=False)

    def knowledge_loss(self, text: Tensor) -> Tensor:
        """``weight * (1 - mean cosine)`` between class text features ``[N, D]`` and the hand-crafted ones."""
        cosine = (F.normalize(text.float(), dim=-1) * self.hand_crafted).sum(-1)
        return self.weight * (1.0 - cosine.mean())

    def forward(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput:
        self._check_no_prompts(prompts)
        text = self.text_features()
        logits = self.scaled_cosine(self.image_features(images), text)
        aux = {"kg": self.knowledge_loss(text)} if self.training else None
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0), aux)


@dataclass
class KgCoOpOptions(CoOpOptions):
    """``model.options`` of ``model.method=kgcoop``: CoOp's, with the official context as the default, and its own."""

    ctx_init: str | None = PHOTO_PHRASE  # the phrase the official code hard-codes whenever one is set
    weight: float = 8.0  # lambda, the knowledge-guided loss weight (the paper's 8.0)
    template: str | None = None  # the hand-crafted prompt; None: the data set's CoOp template, else "a photo of a {}."


@register_method("kgcoop")
class KgCoOpMethod(CoOpFamilyMethod):
    """KgCoOp: CoOp plus a loss keeping the class text features near the hand-crafted prompt's (CLIP or ConSE)."""

    model_class = KgCoOpModel
    Options = KgCoOpOptions

    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> KgCoOpModel:
        options = self.options(cfg)
        return KgCoOpModel(self.load_towers(cfg), class_names, options.n_ctx, options.ctx_init,
                                weight=options.weight, template=options.template or dataset_template(cfg))


def dataset_template(cfg: Config) -> str:
    """The CoOp template of ``data.dataset`` (``"a photo of a {}."`` when it has none)."""
    from ..data.sets import DATASETS, dataset

    name = cfg.data.dataset
    template = dataset(name).coop_template if name in DATASETS else None
    return template or DEFAULT_TEMPLATE
