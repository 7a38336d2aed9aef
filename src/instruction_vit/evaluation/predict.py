"""Evaluation: predictions from the head, from the prompt scores, and their combination."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from ..model import InstructionViT, Prompts
from ..prompts import forward_selected


@dataclass
class Predictions:
    labels: Tensor  # [M]
    logits: Tensor  # [M, C] head
    scores: Tensor | None  # [M, N] prompt scores (all classes), None without prompts

    def probabilities(self) -> dict[str, Tensor]:
        """Class probabilities per prediction route: ``head``, ``score`` and ``combined`` (their mean)."""
        out = {"head": self.logits.softmax(-1)}
        if self.scores is not None and self.scores.shape[1] == self.logits.shape[1]:
            out["score"] = self.scores.softmax(-1)
            out["combined"] = (out["head"] + out["score"]) / 2
        return out


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; nothing on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: InstructionViT,
    loader: DataLoader,
    prompts: Prompts | None,
    device: torch.device,
    amp: bool = True,
    ranker_scores: Tensor | None = None,
    select_k: int | None = None,
) -> Predictions:
    """Run ``model`` over ``loader`` (in order). With ``select_k`` and ``ranker_scores`` ``[M, N]`` (rows in
    loader order), each sample reads only its top-K prompts + 1 averaged token (paper §3.4)."""
    model.eval()
    labels, logits, scores, offset = [], [], [], 0
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        with autocast(device, amp):
            if prompts is None:
                out = model(images)
            elif select_k is not None and ranker_scores is not None:
                rows = ranker_scores[offset : offset + images.shape[0]].to(device)
                out = forward_selected(model, images, prompts, rows, select_k)
            else:
                out = model(images, prompts)
        offset += images.shape[0]
        labels.append(target.cpu())
        logits.append(out.logits.float().cpu())
        scores.append(out.scores.float().cpu())
    all_scores = torch.cat(scores) if prompts is not None else None
    return Predictions(torch.cat(labels), torch.cat(logits), all_scores)


def classification_metrics(pred: Predictions, class_names: list[str]) -> dict[str, dict]:
    """Per route: top-1, top-5 (%), per-class accuracy (%) and the confusion matrix (rows: true class)."""
    num_classes = len(class_names)
    results = {}
    if num_classes == 1:  # torchmetrics needs two classes; with one, every prediction is that class
        n = len(pred.labels)
        return {route: {"top1": 100.0, "per_class": {class_names[0]: 100.0},
                        "confusion": [[n]]} for route in pred.probabilities()}
    for route, probs in pred.probabilities().items():
        top5 = min(5, num_classes)
        results[route] = {
            "top1": 100 * multiclass_accuracy(probs, pred.labels, num_classes, average="micro").item(),
            f"top{top5}": 100 * multiclass_accuracy(probs, pred.labels, num_classes, top_k=top5,
                                                    average="micro").item(),
            "per_class": dict(zip(class_names, (100 * multiclass_accuracy(
                probs, pred.labels, num_classes, average="none")).tolist())),
            "confusion": multiclass_confusion_matrix(probs, pred.labels, num_classes).tolist(),
        }
    return results
