"""Evaluation: a model's predictions and metrics on a split (:mod:`.predict`), a checkpoint's results as
``results.json`` and ``ivit eval`` report them (:mod:`.results`), and the transfer protocols (:mod:`.transfer_protocols`:
zero-shot, base-to-novel, cross-data-set). Training validates and ends with these; it sits above."""

from .predict import Predictions, classification_metrics, predict

__all__ = ["Predictions", "classification_metrics", "predict"]
