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


def measured_cell(values: list[float]) -> str:
    """``mean ± std (n)``, or the one value with ``(n=1)`` where there is no spread to show."""
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std:.2f} ({len(values)})"


def paper_cell(values: list[float], paper: float | None) -> str:
    """The paper's number and the measured mean's difference from it; ``⚠`` where the paper's number lies outside
    mean ± 2 std of the seeds (n >= 2)."""
    if paper is None:
        return "-"
    if not values:
        return f"{paper:.2f}"
    mean, std = _mean_std(values)
    flag = " ⚠" if len(values) > 1 and abs(mean - paper) > 2 * std else ""
    return f"{paper:.2f} (Δ {mean - paper:+.2f}{flag})"


def markdown_report(spec: dict, records: list[dict], command: str) -> str:
    """Rows: methods; columns: each spec column's metrics, measured mean ± std (n seeds) and the paper's number with
    the difference. Cells whose runs departed from the spec carry a mark and a footnote saying how."""
    keys = list(dict.fromkeys((r["column"], r["metric"]) for r in records))
    with_paper = {(c, m) for c, m in keys if any(r["paper"] is not None for r in records
                                                  if (r["column"], r["metric"]) == (c, m))}
    header = ["method"]
    for column, metric in keys:
        header.append(f"{column} {metric}")
        if (column, metric) in with_paper:
            header.append("paper (Δ)")
    lines = [f"# {spec['name']}: {spec.get('description', '').strip()}", "",
             f"Measured top-1 % (mean ± sample std over the seeds run, n in brackets). Made by `{command}`. "
             "Δ: measured mean minus the paper's number; ⚠: the paper's number lies outside mean ± 2 std of the "
             "seeds. †: run with settings that differ from the spec (footnotes).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(dict.fromkeys(r["row"] for r in records))
    by_key = {(r["column"], r["metric"], r["row"]): r for r in records}
    footnotes: dict[str, list[str]] = {}
    for row in rows:
        label = next(r["label"] for r in records if r["row"] == row)
        cells = [label]
        for column, metric in keys:
            record = by_key.get((column, metric, row))
            values = record["values"] if record else []
            if values:
                text = measured_cell(values)
                if record.get("changes"):
                    note = "; ".join(record["changes"])
                    footnotes.setdefault(note, []).append(f"{column}/{row}")
                    text += f" †{list(footnotes).index(note) + 1}"
                cells.append(text)
            elif record and record.get("not_run"):
                cells.append("not run: " + "; ".join(record["not_run"]))
            else:
                cells.append("-")
            if (column, metric) in with_paper:
                cells.append(paper_cell(values, record["paper"] if record else None))
        lines.append("| " + " | ".join(cells) + " |")
    for i, (note, where) in enumerate(footnotes.items()):
        lines += ["", f"†{i + 1} {', '.join(dict.fromkeys(where))}: changed from the spec: {note}"]
    for note in spec.get("notes", []):
        lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def bar_chart(records: list[dict], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per (column, metric), one bar per method, error bars = sample std."""
    plt = _pyplot()
    fig = bar_figure(records, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_figure(records: list[dict], title: str = ""):
    """The figure :func:`bar_chart` saves; each method keeps its own colour in the legend, with or without results
    (one without is listed faded, "(no results)")."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    keys = list(dict.fromkeys((r["column"], r["metric"]) for r in records))
    rows = list(dict.fromkeys(r["row"] for r in records))
    labels = {r["row"]: r["label"] for r in records}
    by_key = {(r["column"], r["metric"], r["row"]): r for r in records}
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) + 2), 4.5))
    colours = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors  # one distinct colour per method
    handles = []
    for i, row in enumerate(rows):
        means, stds, xs = [], [], []
        for j, key in enumerate(keys):
            record = by_key.get((*key, row))
            if record and record["values"]:
                mean, std = _mean_std(record["values"])
                xs.append(j + (i - (len(rows) - 1) / 2) * width)
                means.append(mean)
                stds.append(std)
        colour = colours[i % len(colours)]
        ax.bar(xs, means, width, yerr=stds, capsize=2, color=colour)
        # The legend's own patch: an empty bar group (a method with no results yet) has no bar to take a colour from.
        handles.append(Patch(facecolor=colour, label=labels[row] if xs else f"{labels[row]} (no results)",
                             alpha=1.0 if xs else 0.35))
    ax.set_xticks(range(len(keys)), [f"{c}\n{m}" for c, m in keys], fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
