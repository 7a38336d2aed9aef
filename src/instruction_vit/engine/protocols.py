"""Evaluation protocols beyond plain test accuracy: zero-shot classification and base-to-novel."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..prompts import cosine_scores
from .checkpoint import load_checkpoint
from .evaluate import Predictions, classification_metrics, predict
from .rankers import image_features
from .run import eval_loader, prompt_bank, resolve_device, run_splits


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
        (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def novel_classes(cfg: Config, run: Path, base_top1: float) -> dict[str, Any]:
    """Base-to-novel (CoOp protocol): the model trained on the base classes predicts the novel classes through
    its score head, reading prompts built for the novel class names (text prompts from the names; image prompts
    from one training image per novel class, which is the "instruction by example" that only Instruction-ViT can
    take). Returns base, novel and their harmonic mean (top-1 %)."""
    novel_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, classes="novel"))
    splits = run_splits(novel_cfg)[0]
    bank = prompt_bank(novel_cfg, splits["train"])
    model = load_checkpoint(run / "checkpoints" / "best.safetensors").build_model()
    device = resolve_device(cfg.train.device)
    model.to(device)
    prompts = bank.model_input().to(device)
    pred = predict(model, eval_loader(cfg, model.backbone, splits["test"]), prompts, device, cfg.train.amp)
    novel = classification_metrics(dataclasses.replace(pred, logits=pred.scores), splits["test"].class_names)
    novel_top1 = novel["head"]["top1"]  # the "head" route of these logits is the score head
    hm = 2 * base_top1 * novel_top1 / (base_top1 + novel_top1) if base_top1 + novel_top1 > 0 else 0.0
    return {"base_top1": base_top1, "novel_top1": novel_top1, "hm": hm,
            "novel_class_names": splits["test"].class_names, "novel_per_class": novel["head"]["per_class"]}
