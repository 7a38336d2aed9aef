"""What training, evaluation and the artifacts ask of the model every method builds (:class:`MethodModel`)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..outputs import Capabilities, InstructionOutput, Prompts


@runtime_checkable
class MethodModel(Protocol):
    """The model protocol, what every method builds: :class:`~.InstructionViT`, :class:`~.PlainModel` and CoOp follow
    it, and so must the model of any method (``instruction_vit.methods``).

    * ``backbone``: the image tower; its ``pretrained_cfg`` (mean, std, input size, ...) gives the transforms.
    * ``forward(images, prompts=None)``: one :class:`InstructionOutput` (``scores`` is ``[B, 0]`` without prompts);
      ``prompts`` is a :class:`~instruction_vit.outputs.Prompts` (a model that reads none refuses them).
    * ``bank_prompts()``: the prompts stored in the model (a :class:`~instruction_vit.outputs.Prompts`), or ``None``.
    * ``trainable_parameters(regime, train_prompt_features=False)``: the parameters ``regime`` (``full``,
      ``prompt``, ``linear``) trains, stored prompt features only with ``train_prompt_features``; a regime the
      model cannot follow is a :class:`~instruction_vit.errors.ConfigError`. :func:`~.apply_regime` freezes the rest.
    * ``capabilities``: a :class:`~instruction_vit.outputs.Capabilities` saying what else it can do (read prompts,
      read class names, weights kept by reference, an end-of-epoch step, which epoch is its result, ONNX export);
      the layers above read it and never probe the model. What a capability promises: ``reads_prompts``:
      ``set_prompt_bank(prompts, trainable)``; ``reads_class_names``: ``set_classes(names)``; ``external_state``:
      ``external_weights_id``; ``end_of_epoch``: ``end_epoch(epoch, epochs)``.
    * ``weights_report``: what its timm backbone loaded (a :class:`~.weights.WeightsReport`), or ``None``.

    Optional: ``no_weight_decay()`` (timm's optimizer factory reads it) and extra loss terms in the output's ``aux``
    (training only).
    """

    backbone: nn.Module
    capabilities: Capabilities

    def __call__(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput: ...

    def bank_prompts(self) -> Prompts | None: ...

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]: ...
