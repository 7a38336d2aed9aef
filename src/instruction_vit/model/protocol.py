"""What the engine asks of every classifier it trains, evaluates and saves (whatever its kind)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..outputs import InstructionOutput, Prompts


@runtime_checkable
class ImageClassifier(Protocol):
    """The classifier protocol: :class:`~.InstructionViT`, :class:`~.PlainClassifier` and CoOp follow it, and so must
    the model of any classifier kind (``instruction_vit.classifiers``).

    * ``backbone``: the image tower; its ``pretrained_cfg`` (mean, std, input size, ...) gives the transforms.
    * ``forward(images, prompts=None)``: one :class:`InstructionOutput` (``scores`` is ``[B, 0]`` without prompts);
      ``prompts`` is a :class:`~instruction_vit.outputs.Prompts` (a model that reads none refuses them).
    * ``bank_prompts()``: the prompts stored in the model (a :class:`~instruction_vit.outputs.Prompts`), or ``None``.
    * ``trainable_parameters(regime, train_prompt_features=False)``: the parameters ``regime`` (``full``,
      ``prompt``, ``linear``) trains, stored prompt features only with ``train_prompt_features``; a regime the
      model cannot follow is a :class:`~instruction_vit.errors.ConfigError`. :func:`~.apply_regime` freezes the rest.

    Optional: ``no_weight_decay()`` (timm's optimizer factory reads it), ``set_prompt_bank(prompts, trainable)``
    (models that read instruction prompts), ``external_state`` and ``external_weights_id`` (weights a checkpoint
    saves by reference, see :mod:`instruction_vit.artifacts.checkpoint`), ``weights_report`` (what the backbone loaded),
    ``set_classes(names)`` (models whose classifier is the class names' text, CLIP prompt learners: classify among
    new names), ``end_epoch(epoch, epochs)`` (called after each training epoch, before validation), and extra loss
    terms in the output's ``aux`` (training only).
    """

    backbone: nn.Module

    def __call__(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput: ...

    def bank_prompts(self) -> Prompts | None: ...

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]: ...
