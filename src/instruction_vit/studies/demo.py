"""The offline Fashion-MNIST demo: plain ViT vs Instruction-ViT (text, image, mixed prompts), one budget."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RunFolderError
from ..config import load_config
from ..resolve import resolve
from .report import plot_confusion, plot_curves
from ..training.loop import train

logger = logging.getLogger(__name__)
VARIANTS = {"plain ViT": "none", "text prompts": "text", "image prompts": "image", "mixed prompts": "mixed"}


def run_demo(config: str | Path, out: str | Path, overrides: Sequence[str] = (), force: bool = False,
             ) -> list[dict[str, Any]]:
    """Train and test every variant into ``out/<variant>``; write ``summary.json`` and two PNG plots."""
    out = Path(out)
    demo_entries = {n.replace(" ", "_") for n in VARIANTS} | {"summary.json", "accuracy.png", "confusion.png"}
    foreign = [p.name for p in out.iterdir() if p.name not in demo_entries] if out.exists() else []
    if foreign and not force:
        raise RunFolderError(f"{out} exists and holds no earlier demo ({', '.join(sorted(foreign)[:3])}...); "
                         "choose another --out or pass --force")
    rows, runs = [], {}
    for name, kind in VARIANTS.items():
        cfg = resolve(load_config(config, [*overrides, f"prompts.kind={kind}"])).config
        folder = out / name.replace(" ", "_")
        logger.info(f"== {name} ==")
        started = time.time()
        results = train(cfg, folder, force=True)  # an earlier demo's run is replaced
        runs[name] = folder
        select = f"select_k{cfg.prompts.select_k}"
        row = {
            "variant": name,
            "head_top1": results["all_prompts"]["head"]["top1"],
            "combined_top1": results["all_prompts"].get("combined", {}).get("top1"),
            "selected_top1": results.get(select, {}).get("combined", {}).get("top1"),
            "ranker_top1": results.get("ranker_top1"),
            "seconds": time.time() - started,
            "best_epoch": results["best_epoch"],
        }
        rows.append(row)
        best_route = "combined" if "combined" in results["all_prompts"] else "head"
        plot_confusion(results["all_prompts"][best_route]["confusion"], results["class_names"],
                       folder / "confusion.png", f"{name}: test confusion ({best_route})")
    plot_curves(runs, out / "accuracy.png")
    best = max(rows, key=lambda r: r["combined_top1"] or r["head_top1"])
    best_folder = runs[best["variant"]]
    (out / "confusion.png").write_bytes((best_folder / "confusion.png").read_bytes())
    (out / "summary.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return rows
