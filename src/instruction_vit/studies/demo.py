"""The offline Fashion-MNIST demo: plain ViT vs Instruction-ViT (text, image, mixed prompts), one budget; and the
same over several seeds, for the spread of its numbers (:func:`run_demo_seeds`).

What one seed fixes: repeated runs on one machine give the same numbers (seeded initialisation, data order,
augmentation, splits and image prompts; CPU kernels are deterministic for one build on one CPU). What it does not:
another CPU (other vector instructions, so other kernels) or another torch build rounds differently, and after four
epochs of training those differences grow into other accuracies (up to 6 points, measured on an AVX2-only machine;
issue 20). The seeds' spread is the yardstick for the gaps between variants.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunFolderError
from ..config import load_config
from ..resolve import resolve
from .report import measured_cell, plot_confusion, plot_curves
from ..training.loop import train

logger = logging.getLogger(__name__)
VARIANTS = {"plain ViT": "none", "text prompts": "text", "image prompts": "image", "mixed prompts": "mixed"}
#: What a seed of :func:`run_demo_seeds` sets: everything the demo draws at random (initialisation, data order and
#: augmentation; the class-balanced subsets and the validation split; which training images become image prompts).
SEEDED_KEYS = ("train.seed", "data.split_seed", "prompts.seed")
#: The numbers of a demo row whose spread is reported, and their names in tables.
MEASURES = {"head_top1": "head", "combined_top1": "head + score", "selected_top1": "top-K+1 selection",
            "ranker_top1": "ranker zero-shot"}


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


def run_demo_seeds(config: str | Path, out: str | Path, seeds: Sequence[int], overrides: Sequence[str] = (),
                   force: bool = False) -> dict[str, Any]:
    """:func:`run_demo` once per seed into ``out/seed<S>`` (each seed sets :data:`SEEDED_KEYS`), then the spread:
    per variant and measure the values, their mean and sample std. Written as ``out/spread.json`` and
    ``out/spread.md``; returned as the dict ``spread.json`` holds."""
    out, seeds = Path(out), list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ConfigError("--seeds names no seed; give e.g. --seeds 0,1,2")
    fixed = [o.split("=", 1)[0].strip() for o in overrides if o.split("=", 1)[0].strip() in SEEDED_KEYS]
    if fixed:
        raise ConfigError(f"each seed sets {', '.join(SEEDED_KEYS)}; drop the override of {', '.join(fixed)}")
    foreign = [p.name for p in out.iterdir() if not (p.name in ("spread.json", "spread.md") or
                                                     (p.is_dir() and re.fullmatch(r"seed\d+", p.name)))] \
        if out.exists() else []
    if foreign and not force:
        raise RunFolderError(f"{out} exists and holds more than an earlier demo over these seeds "
                             f"({', '.join(sorted(foreign)[:3])}...); choose another --out or pass --force")
    runs = {}
    for seed in seeds:
        logger.info(f"=== seed {seed} ===")
        runs[seed] = run_demo(config, out / f"seed{seed}", [*overrides, *(f"{k}={seed}" for k in SEEDED_KEYS)],
                              force=force)
    spread = {**demo_spread(runs), "machine": machine()}
    (out / "spread.json").write_text(json.dumps(spread, indent=2), encoding="utf-8")
    (out / "spread.md").write_text(spread_markdown(spread), encoding="utf-8")
    return spread


def machine() -> dict[str, Any]:
    """What the numbers were measured on (their determinism holds for one CPU and one torch build): the CPU model,
    whether it has AVX-512, torch's version and its intra-op threads."""
    import platform

    import torch

    info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace") if Path("/proc/cpuinfo").is_file() \
        else ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()) if v}
    cpu = fields.get("model name", platform.processor() or platform.machine())
    if "cpu family" in fields and "model" in fields:  # e.g. AMD EPYC family 25 model 17: Zen 4 (Genoa)
        cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    return {"cpu": cpu, "avx512": " avx512f" in info, "torch": torch.__version__, "threads": torch.get_num_threads()}


def demo_spread(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant and measure, the seeds' values (in seed order), their mean and sample std (``None`` for one
    seed), from ``{seed: run_demo's rows}``."""
    seeds = list(runs)
    variants = []
    for name in VARIANTS:
        rows = [next(r for r in runs[seed] if r["variant"] == name) for seed in seeds]
        entry: dict[str, Any] = {"variant": name}
        for key in MEASURES:
            values = [r[key] for r in rows]
            if any(v is None for v in values):
                entry[key] = None
                continue
            entry[key] = {"values": values, "mean": statistics.fmean(values),
                          "std": statistics.stdev(values) if len(values) > 1 else None}
        entry["seconds"] = [r["seconds"] for r in rows]
        variants.append(entry)
    return {"seeds": seeds, "seeded_keys": list(SEEDED_KEYS), "variants": variants}


def spread_markdown(spread: dict[str, Any]) -> str:
    """The spread as a Markdown table: mean ± sample std (n) per variant and measure, then each seed's values."""
    seeds = spread["seeds"]
    where = spread.get("machine")
    measured = f" Measured on {where['cpu']}{' (AVX-512)' if where['avx512'] else ''}, torch {where['torch']}, " \
        f"{where['threads']} threads." if where else ""
    lines = [f"Test top-1 % over seeds {', '.join(map(str, seeds))} (each sets {', '.join(spread['seeded_keys'])}): "
             f"mean ± sample std (n seeds). Made by `ivit demo --seeds {','.join(map(str, seeds))}`.{measured}", "",
             "| variant | " + " | ".join(MEASURES.values()) + " |", "|---|" + "---|" * len(MEASURES)]
    for entry in spread["variants"]:
        cells = ["-" if entry[k] is None else measured_cell(entry[k]["values"]) for k in MEASURES]
        lines.append(f"| {entry['variant']} | " + " | ".join(cells) + " |")
    lines += ["", "Each seed (head / head + score / top-K+1 selection):", "",
              "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for entry in spread["variants"]:
        per_seed = []
        for i in range(len(seeds)):
            parts = [f"{entry[k]['values'][i]:.2f}" for k in ("head_top1", "combined_top1", "selected_top1")
                     if entry[k] is not None]
            per_seed.append(" / ".join(parts))
        lines.append(f"| {entry['variant']} | " + " | ".join(per_seed) + " |")
    return "\n".join(lines) + "\n"
