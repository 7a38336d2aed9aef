"""Prompt selection (paper §3.4): keep each sample's top-K class prompts plus one averaged "rest" token.

A ranker scores all N classes per image (``[B, N]``): the zero-shot ranker compares image features of a
joint-space encoder with the text prompt bank, the prototype ranker compares them with per-class mean
features. The model then runs on K+1 prompts instead of N.

Mapping scores back to all N classes: a top-K class gets its own prompt's score. The N-K others share the
rest token; each gets ``rest_score - log(N-K)``, so that a softmax over the N expanded scores gives the
top-K classes exactly the probabilities they have among the K+1 tokens, and spreads the rest token's
probability evenly over the classes it stands for. (With K >= N there is no rest token.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from ..outputs import Prompts


@dataclass(frozen=True)
class Selection:
    index: Tensor  # [B, K] selected class indices, best-ranked first
    num_classes: int  # N

    @property
    def k(self) -> int:
        return self.index.shape[1]

    @property
    def has_rest(self) -> bool:
        return self.k < self.num_classes


def cosine_scores(features: Tensor, class_features: Tensor | Prompts) -> Tensor:
    """``[B, D] x [N, D] -> [B, N]`` cosine similarities (the zero-shot and prototype rankers). ``class_features``
    may be prompts from one source (a text bank's ``model_input()``)."""
    if isinstance(class_features, Prompts):
        class_features = class_features.single()
    return F.normalize(features.float(), dim=-1) @ F.normalize(class_features.float(), dim=-1).T


def class_prototypes(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[N, D]`` normalised mean of the normalised features of each class (the prototype ranker's bank)."""
    feats = F.normalize(features.float(), dim=-1)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels.to(feats.device).long(), feats)
    counts = torch.bincount(labels.long(), minlength=num_classes)
    if (counts == 0).any():
        raise DataError(f"classes {torch.nonzero(counts == 0).flatten().tolist()[:10]} have no features")
    return F.normalize(sums, dim=-1)


def select_top_k(ranker_scores: Tensor, k: int, keep: Tensor | None = None) -> Selection:
    """Top-``k`` classes of each row of ``ranker_scores`` ``[B, N]``.

    ``keep`` (``[B, N]`` bool) marks classes that must be selected (in training: the target classes,
    so their prompts are always present); it is an error if a row keeps more than ``k``.
    """
    if ranker_scores.dim() != 2:
        raise ValueError(f"ranker scores must be [B, N], got shape {tuple(ranker_scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_classes = ranker_scores.shape[1]
    k = min(k, num_classes)
    scores = ranker_scores.float()
    if keep is not None:
        if keep.shape != ranker_scores.shape:
            raise ValueError(f"keep mask shape {tuple(keep.shape)} differs from ranker scores {tuple(scores.shape)}")
        if int(keep.sum(1).max()) > k:
            raise ValueError(f"a sample keeps {int(keep.sum(1).max())} classes but only k={k} are selected")
        scores = scores.masked_fill(keep, float("inf"))
    return Selection(scores.topk(k, dim=1).indices, num_classes)


def target_mask(target: Tensor, num_classes: int) -> Tensor:
    """``[B, N]`` bool: the classes a training target names, to pass as ``keep`` to :func:`select_top_k`.

    Hard targets ``[B]``: the class. Soft targets ``[B, N]`` (Mixup/CutMix, label smoothing): every class
    with more than the row's floor mass (the smoothing share every class gets), i.e. the mixed classes.
    """
    if target.dim() == 1:
        return torch.nn.functional.one_hot(target.long(), num_classes).bool()
    floor = target.min(dim=1, keepdim=True).values
    return target > floor + 1e-6 * target.max(dim=1, keepdim=True).values.clamp_min(1e-12)


def gather_prompts(prompts: Prompts, selection: Selection) -> Prompts:
    """Per-sample prompts ``[B, K(+1), D]`` of every source: the selected classes' prompts, then the mean of the rest.

    Each source of ``prompts`` is ``[N, D]`` (shared) or ``[B, N, D]`` (per sample).
    """
    if not isinstance(prompts, Prompts):
        raise TypeError(f"prompts must be Prompts, not {type(prompts).__name__}: wrap one tensor of features as "
                        "Prompts.of(features)")
    if prompts.num_prompts != selection.num_classes:
        raise ValueError(f"{prompts.num_prompts} prompts for a selection over {selection.num_classes} classes")
    return prompts.map(lambda feats: _gather(feats, selection))


def _gather(prompts: Tensor, selection: Selection) -> Tensor:
    index = selection.index
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(index.shape[0], -1, -1)
    top = torch.gather(prompts, 1, index.unsqueeze(-1).expand(-1, -1, prompts.shape[-1]))
    if not selection.has_rest:
        return top
    rest = (prompts.sum(1) - top.sum(1)) / (selection.num_classes - selection.k)
    return torch.cat([top, rest.unsqueeze(1)], dim=1)


def expand_scores(scores: Tensor, selection: Selection) -> Tensor:
    """``[B, K(+1)]`` scores of the selected prompts -> ``[B, N]`` (see module doc for the rest)."""
    k, n = selection.k, selection.num_classes
    if scores.shape[1] != k + int(selection.has_rest):
        raise ValueError(f"expected {k + int(selection.has_rest)} scores per sample, got {scores.shape[1]}")
    if selection.has_rest:
        base = (scores[:, k:] - math.log(n - k)).expand(-1, n)
    else:
        base = scores.new_full((scores.shape[0], n), float("-inf"))
    return torch.scatter(base, 1, selection.index, scores[:, :k])


def forward_selected(
    model: Callable[..., Any], images: Tensor, prompts: Prompts, ranker_scores: Tensor, k: int,
    keep: Tensor | None = None,
) -> Any:
    """Run ``model`` on each sample's K+1 selected ``prompts`` (the N classes' :class:`Prompts`); the output's scores
    cover all N classes."""
    selection = select_top_k(ranker_scores, k, keep)
    out = model(images, gather_prompts(prompts, selection))
    return out._replace(scores=expand_scores(out.scores, selection))
