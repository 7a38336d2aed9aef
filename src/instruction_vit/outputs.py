"""The two types that travel between the layers (a leaf module, imported by prompts, model, methods and the layers above):

* :class:`Prompts`: the prompt features a model reads (a prompt bank's, a selection's, or a checkpoint's);
* :class:`InstructionOutput`: what every method's model returns, and :func:`route_probabilities`, the one
  rule turning its outputs into class probabilities (``ivit predict``, evaluation and the demo page all use it);
* :class:`Capabilities`: what a method's model declares it can do, read by the layers above instead of probing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor

#: The prediction routes: the classification head, the prompt scores, and their mean (the paper's combination).
ROUTES = ("combined", "head", "score")

#: The source name of prompts from one source (:meth:`Prompts.of`). A model built with one prompt dim projects them
#: with ``prompt_embed.proj.prompts`` and stores them as ``prompt_bank.prompts``: checkpoints carry these names.
SINGLE_SOURCE = "prompts"


def prompt_input_name(source: str) -> str:
    """The name of a prompt source's input in an exported ONNX graph (``ivit export --prompts-input``): ``prompts``
    for prompts from one source, ``prompts_text`` / ``prompts_image`` for text and image in different spaces."""
    return SINGLE_SOURCE if source == SINGLE_SOURCE else f"{SINGLE_SOURCE}_{source}"


@dataclass(frozen=True, eq=False)
class Prompts:
    """Prompt features, the one form in which prompts reach a model.

    ``features`` maps each prompt source to its features: ``[P, D]`` shared by the batch or ``[B, P, D]`` per sample
    (each source its own ``D``; every source the same number of prompts ``P``). Prompts from one source (one encoder,
    or text and image features averaged in a joint space) are named ``"prompts"``: build them with
    :meth:`Prompts.of`. Text and image features in different spaces are two sources, ``{"text": ..., "image": ...}``:
    the model projects each with its own layer and averages the tokens.
    """

    features: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        features = dict(self.features)  # a copy: later changes to the caller's mapping do not reach these prompts
        if not features:
            raise ValueError("Prompts need at least one source of prompt features")
        for name, feats in features.items():
            if not isinstance(name, str) or not isinstance(feats, Tensor):
                raise TypeError(f"Prompts map source names to tensors, got {type(name).__name__} -> "
                                f"{type(feats).__name__}")
            if feats.dim() not in (2, 3):
                raise ValueError(f"prompt features must be [P, D] or [B, P, D], got shape {tuple(feats.shape)} "
                                 f"for {name!r}")
        counts = {name: int(feats.shape[-2]) for name, feats in features.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"prompt sources give different numbers of prompts: {counts}")
        batches = {name: int(feats.shape[0]) for name, feats in features.items() if feats.dim() == 3}
        if len(set(batches.values())) > 1:
            raise ValueError(f"per-sample prompt sources give different batch sizes: {batches}")
        object.__setattr__(self, "features", features)

    @classmethod
    def of(cls, features: Tensor) -> Prompts:
        """Prompts from one source: ``[P, D]`` or ``[B, P, D]`` features."""
        return cls({SINGLE_SOURCE: features})

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.features)

    @property
    def num_prompts(self) -> int:
        """``P``: the number of prompts (tokens) the model reads."""
        return int(next(iter(self.features.values())).shape[-2])

    @property
    def device(self) -> Any:
        return next(iter(self.features.values())).device

    def single(self) -> Tensor:
        """The features of prompts from one source; a :class:`ValueError` if there are several."""
        if len(self.features) != 1:
            raise ValueError(f"these prompts have several sources {list(self.features)}: read prompts.features[name]")
        return next(iter(self.features.values()))

    def map(self, fn: Callable[[Tensor], Tensor]) -> Prompts:
        """The same sources, each source's features through ``fn``."""
        return Prompts({name: fn(feats) for name, feats in self.features.items()})

    def to(self, *args: Any, **kwargs: Any) -> Prompts:
        """As :meth:`torch.Tensor.to`, for every source."""
        return self.map(lambda feats: feats.to(*args, **kwargs))

    def onnx_inputs(self) -> dict[str, Any]:
        """These prompts as the inputs of a graph exported with ``--prompts-input``: each source's ``[P, D]`` features
        as a float32 numpy array under its input name (:func:`prompt_input_name`), ready for ONNX Runtime:
        ``session.run(None, {"image": x, **prompts.onnx_inputs()})``."""
        per_sample = [name for name, feats in self.features.items() if feats.dim() != 2]
        if per_sample:
            raise ValueError(f"an exported graph reads one [P, D] set of prompts for the batch; {per_sample[0]!r} "
                             "holds per-sample [B, P, D] features")
        return {prompt_input_name(name): feats.detach().float().cpu().numpy() for name, feats in self.features.items()}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name!r}: {list(feats.shape)}" for name, feats in self.features.items())
        return f"Prompts({{{shapes}}})"


class InstructionOutput(NamedTuple):
    logits: Tensor  # [B, num_classes]: the classification head (CoOp: CLIP's scaled cosine to the class texts)
    scores: Tensor  # [B, P]: scaled cosine between the [CLS] output and each prompt output; [B, 0] without prompts
    #: Extra loss terms of the method, already weighted (KgCoOp's knowledge-guided term, PromptSRC's regularisers):
    #: the training loss adds each, under its name. ``None`` (or empty) for none; a model returns them only when
    #: training.
    aux: Mapping[str, Tensor] | None = None


def route_probabilities(logits: Tensor, scores: Tensor | None, route: str) -> Tensor:
    """``[B, N]`` class probabilities of one route: ``head`` (softmax of the logits), ``score`` (softmax of the
    prompt scores) or ``combined`` (the mean of the two), in float32."""
    if route == "head":
        return logits.float().softmax(-1)
    if scores is None:
        raise ValueError(f"the {route} route needs prompt scores, and there are none")
    if route == "score":
        return scores.float().softmax(-1)
    if route == "combined":
        return (logits.float().softmax(-1) + scores.float().softmax(-1)) / 2
    raise ValueError(f"unknown route {route!r}; one of {', '.join(ROUTES)}")


@dataclass(frozen=True)
class Capabilities:
    """What a method's model can do beyond the protocol's core (``forward``, ``bank_prompts``, ``trainable_parameters``),
    declared as the class attribute ``capabilities`` of its model (as timm models declare ``pretrained_cfg``); the
    layers above read it and never probe the model with ``getattr``.

    * ``reads_prompts``: it reads instruction prompts (``set_prompt_bank(prompts, trainable)`` stores them, its
      output's ``scores`` score them): new class names reach it as prompts for the names;
    * ``reads_class_names``: its classifier is the class names' text (a CLIP prompt learner):
      ``set_classes(names)`` makes it classify among new names, its ``logits`` are the prediction;
    * ``external_state``: state-dict prefixes of frozen weights rebuilt from the config (CoOp's CLIP), saved by
      reference in checkpoints and checked by the model's ``external_weights_id``;
    * ``end_of_epoch``: ``end_epoch(epoch, epochs)`` is to be called after each training epoch, before validation;
    * ``final_model``: ``"best"`` (the best validation epoch is the result) or ``"last"`` (the last epoch is, e.g. an
      aggregate over epochs);
    * ``exportable``: ``ivit export`` can trace it to ONNX;
    * ``prompt_dims``: the feature dim of each prompt source it projects (``{"prompts": 384}``, or ``{"text": 512,
      "image": 1280}``), empty when it reads none.

    A class declares them as a class attribute, or as a property where they depend on how the model was built (an
    Instruction-ViT built without prompt dims is a plain ViT).
    """

    reads_prompts: bool = False
    reads_class_names: bool = False
    external_state: tuple[str, ...] = ()
    end_of_epoch: bool = False
    final_model: str = "best"
    exportable: bool = True
    prompt_dims: Mapping[str, int] = field(default_factory=dict)


def capabilities(model: Any) -> Capabilities:
    """The :class:`Capabilities` ``model`` declares (its attribute ``capabilities``); a model that declares none is an
    error naming it (a method's model must follow the protocol)."""
    declared = getattr(model, "capabilities", None)
    if not isinstance(declared, Capabilities):
        raise TypeError(f"{type(model).__name__} declares no capabilities: give the class a "
                        "capabilities = Capabilities(...) attribute (instruction_vit.outputs.Capabilities)")
    return declared
