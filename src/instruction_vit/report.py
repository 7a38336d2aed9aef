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


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def markdown_report(spec: dict, records: list[dict], command: str) -> str:
    """Rows: methods; columns: each spec column's metrics, measured mean ± std (n seeds) and the paper's number."""
    keys = list(dict.fromkeys((r["column"], r["metric"]) for r in records))
    with_paper = {(c, m) for c, m in keys if any(r["paper"] is not None for r in records
                                                  if (r["column"], r["metric"]) == (c, m))}
    header = ["method"]
    for column, metric in keys:
        header.append(f"{column} {metric}")
        if (column, metric) in with_paper:
            header.append("paper")
    lines = [f"# {spec['name']}: {spec.get('description', '').strip()}", "",
             f"Measured top-1 % (mean ± sample std over the seeds run, n in brackets). Made by `{command}`.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(dict.fromkeys(r["row"] for r in records))
    by_key = {(r["column"], r["metric"], r["row"]): r for r in records}
    for row in rows:
        label = next(r["label"] for r in records if r["row"] == row)
        cells = [label]
        for column, metric in keys:
            record = by_key.get((column, metric, row))
            if record is None or not record["values"]:
                cells.append("-")
            else:
                mean, std = _mean_std(record["values"])
                cells.append(f"{mean:.2f} ± {std:.2f} ({len(record['values'])})")
            if (column, metric) in with_paper:
                paper = record["paper"] if record else None
                cells.append("-" if paper is None else f"{paper:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    for note in spec.get("notes", []):
        lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def bar_chart(records: list[dict], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per (column, metric), one bar per method, error bars = sample std."""
    plt = _pyplot()
    keys = list(dict.fromkeys((r["column"], r["metric"]) for r in records))
    rows = list(dict.fromkeys(r["row"] for r in records))
    labels = {r["row"]: r["label"] for r in records}
    by_key = {(r["column"], r["metric"], r["row"]): r for r in records}
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) + 2), 4.5))
    for i, row in enumerate(rows):
        means, stds, xs = [], [], []
        for j, key in enumerate(keys):
            record = by_key.get((*key, row))
            if record and record["values"]:
                mean, std = _mean_std(record["values"])
                xs.append(j + (i - (len(rows) - 1) / 2) * width)
                means.append(mean)
                stds.append(std)
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=labels[row])
    ax.set_xticks(range(len(keys)), [f"{c}\n{m}" for c, m in keys], fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
