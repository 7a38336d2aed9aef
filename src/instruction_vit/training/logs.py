"""The lines a run logs as it starts and after each epoch (one line each, a person's words)."""

from __future__ import annotations

import math
from typing import Any

from ..config import Config
from ..prompts import PromptBank


def epoch_line(row: dict[str, Any]) -> str:
    val = " ".join(f"{k.removeprefix('val_top1_')} {v:.1f}%" for k, v in row.items() if k.startswith("val_top1_"))
    return f"epoch {row['epoch']}: loss {row.get('train_loss', math.nan):.3f}  val top-1 {val} " \
           f"({row['epoch_seconds']:.1f}s, training {_rate(row['train_images_per_second'])} img/s)"


def _rate(value: float) -> str:
    """Images per second, to three significant figures (a ViT-B on a CPU trains at well under one)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


#: What a run's results record of its prompt bank.
PROMPT_RECORD = ("kind", "key", "text_encoder", "text_weights", "image_encoder", "image_weights", "templates",
                 "per_class", "seed", "image_ids", "image_split", "loaded")


def data_line(info: dict) -> str:
    """One line saying where the splits came from and how big they are (printed as a run starts)."""
    sizes = info.get("sizes", {})
    source = info.get("source", "?")
    where = {"coop_split_file": f"split file {info.get('split_file')} (sha256 {str(info.get('split_file_sha256'))[:12]})",
             "seeded": f"seeded split (seed {info.get('seed')})", "official": "official split"}.get(
        source, f"{source} splits")
    skipped = (info.get("skipped_images") or {}).get("count", 0)
    return (f"data: {info.get('dataset')} at {info.get('root')}, {where}: train {sizes.get('train')} / val "
            f"{sizes.get('val')} / test {sizes.get('test')} images, {info.get('num_classes')} classes"
            + (f"; {skipped} unreadable image(s) skipped" if skipped else ""))


def prompts_line(cfg: Config, bank: PromptBank) -> str:
    """One line saying which prompts a run reads and what made them."""
    m = bank.meta
    encoders = ", ".join(dict.fromkeys(f"{m[k]} ({m[w]})" for k, w in (("text_encoder", "text_weights"),
                                                                       ("image_encoder", "image_weights")) if k in m))
    line = f"prompts: {bank.kind}, {bank.num_classes} classes, from {encoders}, bank {bank.key}"
    if m.get("loaded"):
        line += f" (encoded by {'; '.join(m['loaded'].values())})"
    k = cfg.prompts.select_k
    if k is not None and k >= bank.num_classes:
        line += (f"; prompts.select_k={k} >= {bank.num_classes} classes: top-K+1 selection keeps every prompt, so it "
                 "equals evaluation with all prompts")
    return line


def results_line(results: dict[str, Any], where: str) -> str:
    """One line with a finished run's test top-1 per route (and with top-K+1 prompts), saying where the results are."""
    parts = []
    for key, routes in results.items():
        if key == "all_prompts" or key.startswith("select_k"):
            label = "" if key == "all_prompts" else f" (top-{key.removeprefix('select_k')}+1 prompts)"
            parts.append(", ".join(f"{route} {m['top1']:.1f}%" for route, m in routes.items()) + label)
    return (f"test top-1 of the best epoch ({results.get('best_epoch')}): {'; '.join(parts)}; all results in "
            f"{where}")
