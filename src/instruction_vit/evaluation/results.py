"""A checkpoint's results on a split: the same code at the end of training and in ``ivit eval``.

With all N prompts, every route (``head``, ``score``, ``combined``); with ``select_k``, again with each image
reading its top-K prompts plus one averaged token (paper §3.4), and the ranker's own top-1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import Config, DataConfig, load_config
from ..data import LabelledImages
from ..errors import ConfigError, DataError
from ..artifacts.checkpoint import Checkpoint, load_checkpoint
from .predict import classification_metrics, predict
from ..data.loaders import eval_loader, run_splits
from ..prompts.ranking import ranker_scores
from ..devices import resolve_device


def checkpoint_results(
    checkpoint: Checkpoint | str | Path,
    split: str = "test",
    select_k: int | None = None,
    splits: Mapping[str, LabelledImages] | None = None,
    config: Config | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` (a file, or a run folder: its best checkpoint) on ``split`` of its data.

    ``splits`` and ``config`` default to the checkpoint's own (a caller that already loaded them, as training does,
    passes them). Returns ``{"best_epoch", "class_names", "split", "all_prompts": {route: metrics}, "top1"}``
    plus ``"select_k{K}"`` and ``"ranker_top1"`` with selection."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg = config or ckpt.config
    if split not in ("val", "test"):
        raise ConfigError(f"the split must be val or test, not {split!r}")
    if splits is None:
        splits = run_splits(cfg)[0]
    if splits["train"].class_names != ckpt.class_names:
        found = splits["train"].class_names
        raise DataError(f"the checkpoint has {len(ckpt.class_names)} classes but the data has {len(found)} "
                        f"({found[:5]}): evaluate it on the data it was trained for")
    device = resolve_device(cfg.train.device)
    model = ckpt.build_model().to(device)
    loader = eval_loader(cfg, model.backbone, splits[split])
    prompts = model.bank_prompts()
    results: dict[str, Any] = {"best_epoch": ckpt.meta["epoch"] + 1, "class_names": ckpt.class_names, "split": split}
    pred = predict(model, loader, prompts, device, cfg.train.amp)
    results["all_prompts"] = classification_metrics(pred, ckpt.class_names)
    routes = results["all_prompts"]
    results["top1"] = routes["combined" if "combined" in routes else "head"]["top1"]  # the headline number
    if prompts is not None and select_k:
        ranking = ranker_scores(cfg, splits["train"], splits[split])
        pred = predict(model, loader, prompts, device, cfg.train.amp, ranking, select_k)
        results[f"select_k{select_k}"] = classification_metrics(pred, ckpt.class_names)
        ranker_top1 = (ranking.argmax(1) == torch.tensor(splits[split].labels)).float().mean().item()
        results["ranker_top1"] = 100 * ranker_top1
    return results


def evaluate(checkpoint: str | Path, split: str = "test", select_k: int | None = None,
             overrides: Sequence[str] = (), encoder: str | None = None,
             image_encoder: str | None = None) -> dict[str, Any]:
    """:func:`checkpoint_results` with ``data.*`` overrides (other images of the same classes, say); what
    ``ivit eval`` prints. ``encoder`` / ``image_encoder`` as in :func:`~.checkpoint.load_checkpoint`."""
    ckpt = load_checkpoint(checkpoint, encoder, image_encoder)
    cfg = ckpt.config
    if overrides:
        if any(not o.startswith("data.") for o in overrides):
            raise ConfigError("eval takes only data.* overrides; the model comes from the checkpoint")
        cfg = load_config(None, overrides, base=cfg.to_dict())
    if ckpt.source is not None and cfg.data.dataset != DataConfig.dataset and \
            not any(o.startswith(("data.root=", "data.split_file=")) for o in overrides):
        raise ConfigError(f"{ckpt.name} does not say where its {cfg.data.dataset} images are on this machine (a model "
                          "folder's paths are not followed): pass data.root=FOLDER")
    if select_k and cfg.prompts.ranker == "zero_shot":
        ckpt.require_encoders("the zero-shot ranker of --select-k")
    return {**checkpoint_results(ckpt, split, select_k, config=cfg), "checkpoint": ckpt.name}  # what was loaded
