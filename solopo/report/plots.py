"""The report's PNG plots, one function per kind: accuracy vs context length, score vs alpha, score vs training step,
and the length x depth heatmap of one evaluation (matplotlib, no display needed).

A value is a sub-EM in %, or a Stat over seeds drawn as its mean with an error bar of one standard deviation.
The y axis of the line plots starts at 0 and fits the data: small models score low, and a 0-100 axis would
flatten their differences.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only: runs on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402

from solopo.cache import atomic_file  # noqa: E402
from solopo.report.runs import Stat  # noqa: E402
from solopo.scoring import points, score_name  # noqa: E402

Value = float | Stat
LENGTH_AXIS = "context length (tokens; short = the evidence alone)"
MIN_TOP = 10.0  # sub-EM points: an axis for all-zero scores (a tiny random model) stays readable
DASHED = dict(color="grey", linestyle="--")  # a reference line, e.g. the model before training


def by_length(table: dict) -> dict[str, float]:
    """An evaluation table's sub-EM (%) by context length."""
    return {str(n): points(score) for n, score in table["by_length"].items()}


def accuracy_vs_length(panels: Mapping[str, Mapping[str, Mapping[str, Value]]], path: Path,
                       ylabel: str = "sub-EM (%)", dashed: tuple[str, ...] = ()) -> Path:
    """Sub-EM against context length: one panel per title, {title: {line name: {length: value}}}, the panels side
    by side on one y axis; lines named in ``dashed`` are drawn as grey dashes. Lengths keep the order met."""
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.4, 4.6 * len(panels)), 4.2), sharey=True, squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items()):
        lengths = list(dict.fromkeys(n for series in lines.values() for n in series))
        for name, series in lines.items():
            _line(ax, range(len(lengths)), [series.get(n, float("nan")) for n in lengths], name,
                  DASHED if name in dashed else {})
        ax.set_xticks(range(len(lengths)), lengths)
        ax.set(title=title, xlabel=LENGTH_AXIS)
        _finish(ax)
    axes[0][0].set_ylabel(ylabel)
    return save_figure(fig, path)


def score_vs_alpha(lines: Mapping[str, Mapping[float, Value]], path: Path, ylabel: str = "avg long-context sub-EM (%)",
                   tick_notes: Mapping[float, str] | None = None) -> Path:
    """A score against the SoLo-RA weight alpha, one line per name, {name: {alpha: value}}. The alphas are evenly
    spaced on the axis (0, 0.3, 1, 3); ``tick_notes`` adds words to a tick, e.g. {0.0: "without SoLo-RA"}."""
    alphas = sorted({a for points in lines.values() for a in points})
    notes = tick_notes or {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in lines.items():
        ordered = sorted(points)
        _line(ax, [alphas.index(a) for a in ordered], [points[a] for a in ordered], name, {})
    ax.set_xticks(range(len(alphas)), [f"{a:g}" + (f" ({notes[a]})" if a in notes else "") for a in alphas])
    ax.set(xlabel="SoLo-RA alpha", ylabel=ylabel, title="Score vs alpha")
    _finish(ax)
    return save_figure(fig, path)


def score_vs_step(panels: Mapping[str, Mapping[str, Mapping[int, Value]]], path: Path,
                  ylabel: str = "avg long-context sub-EM (%)", marked: int | None = None, from_zero: bool = True) -> Path:
    """A score against the optimizer step: one panel per title, {title: {line name: {step: value}}}, side by side on
    one y axis; ``marked`` draws a dotted vertical line at one step (e.g. the best one kept). ``from_zero=False`` fits
    the axis to values that may be negative (a reward, a log-prob)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 4.6 * len(panels)), 4.2), sharey=True, squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items()):
        for name, points in lines.items():
            steps = sorted(points)
            _line(ax, steps, [points[s] for s in steps], name, {})
        if marked is not None:
            ax.axvline(marked, color="grey", linestyle=":", label=f"kept: step {marked}")
        ax.set(xlabel="optimizer step", title=title)
        _finish(ax, from_zero)
    axes[0][0].set_ylabel(ylabel)
    return save_figure(fig, path)


def _line(ax, xs, values: list[Value], name: str, style: dict) -> None:
    """Means joined by a line; error bars where some value is a Stat over more than one seed."""
    means = [v.mean if isinstance(v, Stat) else v for v in values]
    stds = [v.std if isinstance(v, Stat) else 0.0 for v in values]
    if any(isinstance(v, Stat) and v.n > 1 for v in values):
        ax.errorbar(list(xs), means, yerr=stds, marker="o", capsize=3, label=name, **style)
    else:
        ax.plot(list(xs), means, marker="o", label=name, **style)


def _finish(ax, from_zero: bool = True) -> None:
    if from_zero:
        ax.set_ylim(0, max(ax.get_ylim()[1], MIN_TOP))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def depth_grid(table: dict) -> tuple[list[str], list[str], list[list[float]]]:
    """(lengths, depths, score in points per length and depth) of an evaluation table: the configured scorer's score
    (a cell's "score"; its "sub_em" is sub-EM whatever the scorer), NaN where no case was built."""
    cells = [c for c in table["cells"] if c["depth"] != "-"]
    lengths = sorted({c["length"] for c in cells}, key=int)  # built lengths only: fixed contexts have no depth
    depths = sorted({c["depth"] for c in cells}, key=float)
    return lengths, depths, [[next((points(c["score"]) for c in cells if c["length"] == n and c["depth"] == d),
                                   float("nan")) for d in depths] for n in lengths]


def depth_heatmap(table: dict, path: Path, title: str = "") -> Path:
    """A length x depth grid of the table's score (%) (depth_grid), each cell annotated with its value, the scorer
    named on the colour bar and in the title."""
    lengths, depths, grid = depth_grid(table)
    fig, ax = plt.subplots(figsize=(1.2 * len(depths) + 2.5, 0.6 * len(lengths) + 1.8))
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
    ax.set_yticks(range(len(lengths)), lengths)
    ax.set_xlabel("evidence depth (0% = start of the context)")
    ax.set_ylabel("context length (tokens)")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black")
    label = f"{score_name(table)} (%)"
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(f"{title + ': ' if title else ''}{label} by length and evidence depth")
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """The figure as a PNG, laid out tight; where the labels leave tight_layout no room (a legend of many runs' long
    names), the canvas grows around them instead of matplotlib warning that it could not. Written whole or not at all
    (solopo.cache.atomic_file: a full disk is a WriteFailed naming ``path``)."""
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.tight_layout()
    fitted = not any("Tight layout not applied" in str(w.message) for w in caught)
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120, **({} if fitted else {"bbox_inches": "tight"}))
    finally:
        plt.close(fig)
    return path
