"""Plots and tables a person can read (matplotlib, headless)."""

from __future__ import annotations

import csv
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: dict[str, Path], path: Path, column: str = "val_top1_combined") -> Path:
    """Validation top-1 per epoch, one line per run (``column``, falling back to the head's)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        with open(run / "metrics.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        key = column if rows and column in rows[0] else "val_top1_head"
        ax.plot([int(r["epoch"]) for r in rows], [float(r[key]) for r in rows], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(confusion):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > max(map(max, confusion)) / 2 else "black")
    fig.colorbar(image)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
