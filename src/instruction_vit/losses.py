"""The Instruction-ViT loss (paper §3.3): ``loss = w_head * CE(logits) + w_score * CE(scores)``.

Scores (scaled cosines) go straight into the cross-entropy as logits. The reference implementation
applies a softmax first and feeds probabilities to ``CrossEntropyLoss`` (a double softmax); that is a bug,
not the method. Targets may be class indices ``[B]`` or soft targets ``[B, N]`` (Mixup/CutMix, label
smoothing already folded in).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .model import InstructionOutput


class InstructionLoss(nn.Module):
    """Returns a dict of named parts: ``loss`` (the total to backpropagate), ``head`` and ``score``."""

    def __init__(self, head_weight: float = 1.0, score_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if head_weight < 0 or score_weight < 0:
            raise ValueError("loss weights must be non-negative")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.head_weight = head_weight
        self.score_weight = score_weight
        self.label_smoothing = label_smoothing

    def forward(self, output: InstructionOutput, target: Tensor) -> dict[str, Tensor]:
        logits, scores = output.logits, output.scores
        _check_target(logits, target, "logits")
        head = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        parts = {"head": head}
        total = self.head_weight * head
        if scores.shape[1] > 0:
            _check_target(scores, target, "scores")
            score = F.cross_entropy(scores.float(), target, label_smoothing=self.label_smoothing)
            parts["score"] = score
            total = total + self.score_weight * score
        for name, value in (output.aux or {}).items():  # the method's own terms, weighted by the method
            if name in ("head", "score", "loss"):
                raise ValueError(f"a classifier's extra loss term may not be called {name!r}")
            parts[name] = value.float()
            total = total + value.float()
        parts["loss"] = total
        return parts


def _check_target(pred: Tensor, target: Tensor, name: str) -> None:
    num = pred.shape[1]
    if target.dim() == 2 and target.shape[1] != num:
        raise ValueError(
            f"soft targets cover {target.shape[1]} classes but {name} has {num} columns: "
            "the prompts must be one per class, in label order (expand selected scores to all classes first)"
        )
    if target.dim() == 1 and target.numel() and int(target.max()) >= num:
        raise ValueError(f"target class {int(target.max())} is out of range for {name} with {num} classes")
