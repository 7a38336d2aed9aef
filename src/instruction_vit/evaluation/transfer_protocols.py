"""Evaluation protocols beyond plain test accuracy: zero-shot classification, base-to-novel and cross-data-set
transfer (a trained model on another data set's class names)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import ConfigError
from ..files import file_sha256, write_text
from ..prompts import cosine_scores
from ..artifacts.checkpoint import load_checkpoint
from ..artifacts.new_classes import FixedClassesError, prepare_new_classes
from ..outputs import Prompts
from .predict import Predictions, classification_metrics, predict
from ..prompts.ranking import image_features
from ..data.loaders import eval_loader, run_splits
from ..prompts.run_bank import prompt_bank
from ..devices import resolve_device


def zero_shot(cfg: Config, out: str | Path | None = None) -> dict[str, Any]:
    """Zero-shot classification with the prompt encoder's template ensemble: test image features against the
    text prompt bank (the CLIP baseline; offline, ConSE). No training; writes ``out/results.json`` if given."""
    splits = run_splits(cfg)[0]
    text = prompt_bank(cfg, splits["train"], kind="text")
    feats = image_features(cfg.prompts.encoder, splits["test"], cfg.prompts.cache_dir)
    logits = 100 * cosine_scores(feats, text.features["text"])
    pred = Predictions(torch.tensor(splits["test"].labels), logits, None)
    metrics = classification_metrics(pred, splits["test"].class_names)["head"]
    results = {"top1": metrics["top1"], "zero_shot": metrics, "class_names": splits["test"].class_names}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_run(out, cfg, results)
    return results


def new_classes(cfg: Config, checkpoint: str | Path) -> dict[str, Any]:
    """A trained model, without further training, on the test images of ``cfg.data`` with that data's own class
    names: the "new classes" step of base-to-novel and of cross-data-set transfer.

    Each kind of model takes new class names by its own route: a CLIP prompt learner (a model with
    ``set_classes``) puts its learned prompts before the new names and its logits are the prediction;
    Instruction-ViT reads prompts built for the new names (text prompts from the names; image prompts from the
    data's training images, the "instruction by example") through its score head. A plain model (no prompts,
    a head fixed to its training classes) cannot: a :class:`FixedClassesError` says so. Returns top-1 and top-5 (%),
    per-class top-1, the class names and how the names reached the model."""
    cfg = dataclasses.replace(cfg, prompts=dataclasses.replace(cfg.prompts, bank_file=None))  # a saved bank: old names
    ckpt = load_checkpoint(checkpoint)
    splits = run_splits(cfg)[0]
    test = splits["test"]
    device = resolve_device(cfg.train.device)
    model = ckpt.build_model().to(device)

    def prompts_for() -> tuple[Prompts, str]:  # the data's own prompts for its names (image prompts: its images)
        bank = prompt_bank(cfg, splits["train"], kind=ckpt.meta.get("bank_kind", cfg.prompts.kind))
        return bank.model_input().to(device), f"{bank.kind} prompts for the new class names, through the score head"

    use = prepare_new_classes(model, ckpt.config.model.method, test.class_names, prompts_for, fixed=str(checkpoint))
    how = use.how
    pred = predict(model, eval_loader(cfg, model.backbone, test), use.prompts, device, cfg.train.amp)
    if use.route == "score":  # the score head is the prediction over the new names
        pred = dataclasses.replace(pred, logits=pred.scores)
    metrics = classification_metrics(pred, test.class_names)["head"]
    top5 = next((k for k in metrics if k.startswith("top") and k != "top1"), None)
    return {"top1": metrics["top1"], **({top5: metrics[top5]} if top5 else {}), "per_class": metrics["per_class"],
            "class_names": test.class_names, "how": how}


def novel_classes(cfg: Config, run: Path, base_top1: float) -> dict[str, Any]:
    """Base-to-novel (CoOp protocol): the model trained on the base classes predicts the novel classes by
    :func:`new_classes` (Instruction-ViT through prompts for the novel names, a CLIP prompt learner through its
    learned prompts before them). Returns base, novel and their harmonic mean (top-1 %)."""
    novel_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, classes="novel"))
    novel = new_classes(novel_cfg, run / "checkpoints" / "best.safetensors")
    novel_top1 = novel["top1"]
    hm = 2 * base_top1 * novel_top1 / (base_top1 + novel_top1) if base_top1 + novel_top1 > 0 else 0.0
    return {"base_top1": base_top1, "novel_top1": novel_top1, "hm": hm,
            "novel_class_names": novel["class_names"], "novel_per_class": novel["per_class"], "how": novel["how"]}


def transfer(cfg: Config, checkpoint: str | Path, out: str | Path | None = None,
             source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cross-data-set transfer: ``checkpoint`` (trained on another data set) on ``cfg.data`` with its own class
    names, no further training (:func:`new_classes`). ``source`` (what the checkpoint is: cell, data set, top-1)
    is recorded beside the numbers; writes ``out/config.yaml`` and ``out/results.json`` if given."""
    metrics = new_classes(cfg, checkpoint)
    results = {"top1": metrics["top1"], "transfer": {**metrics, "source": source or {},
                                                     "checkpoint": str(checkpoint),
                                                     "checkpoint_sha256": file_sha256(Path(checkpoint))},
               "data": {"dataset": cfg.data.dataset, "classes": len(metrics["class_names"])}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_run(out, cfg, results)
    return results


def _write_run(out: Path, cfg: Config, results: dict[str, Any]) -> None:
    """A protocol's run folder: its config, then its results, each written whole."""
    write_text(out / "config.yaml", cfg.to_yaml())
    write_text(out / "results.json", json.dumps(results, indent=2))
