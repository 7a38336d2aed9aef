"""The two types that travel between the layers (a leaf module, imported by prompts, model, classifiers and engine):

* :class:`Prompts`: the prompt features a model reads (a prompt bank's, a selection's, or a checkpoint's);
* :class:`InstructionOutput`: what every classifier of this package returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

#: The source name of prompts from one source (:meth:`Prompts.of`). A model built with one prompt dim projects them
#: with ``prompt_embed.proj.prompts`` and stores them as ``prompt_bank.prompts``: checkpoints carry these names.
SINGLE_SOURCE = "prompts"


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
