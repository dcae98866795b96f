"""The study's plots (solopo.report_study): accuracy vs context length per method, score vs alpha.

Both take the study's groups, {(algo, method, alpha): [Run, ...]}, and draw means with error bars of one
standard deviation over seeds. The y axis starts at 0 and fits the data: small models score low, and a
0-100 axis would flatten their differences.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from solopo.eval.plots import plt, save_figure
from solopo.report_seeds import stat

BASE_STYLE = dict(color="grey", linestyle="--", marker="o")


def _series(runs: list, columns: list[str]) -> tuple[list[float], list[float]]:
    stats = [stat(r.scores.get(c) for r in runs if not r.failed) for c in columns]
    return ([s.mean if s else float("nan") for s in stats], [s.std if s else 0.0 for s in stats])


def accuracy_vs_length(groups: dict, lengths: list[str], algos: list[str], alpha_of: Callable[[str], float | None],
                       path: Path) -> Path | None:
    """One panel per algorithm: a line per method (SoLoPO at alpha_of(algo)), the base model dashed."""
    if not algos or not lengths:
        return None
    fig, axes = plt.subplots(1, len(algos), figsize=(max(6.0, 4.6 * len(algos)), 4.2), sharey=True, squeeze=False)
    base = next((runs for (algo, method, _), runs in groups.items() if method == "base"), None)
    x = range(len(lengths))
    for ax, algo in zip(axes[0], algos):
        if base:
            ax.plot(x, _series(base, lengths)[0], label="base", **BASE_STYLE)
        for (group_algo, method, alpha), runs in groups.items():
            if group_algo != algo or (method.startswith("solopo") and alpha != alpha_of(algo)):
                continue
            means, stds = _series(runs, lengths)
            if any(m == m for m in means):  # a group whose runs all failed has no line
                name = method + (f" (alpha {alpha:g})" if alpha is not None else "")
                ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_xticks(list(x), lengths)
        ax.set(title=f"{algo}: accuracy vs context length", xlabel="context length (tokens; short = the evidence alone)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("sub-EM (%) after training (mean ± std over seeds)")
    return save_figure(fig, path)


def score_vs_alpha(groups: dict, algos: list[str], path: Path) -> Path | None:
    """Average long-context sub-EM against the SoLo-RA weight, one line per algorithm; alpha 0 is short_po
    (the same pairs and loss without SoLo-RA). Alphas are evenly spaced on the axis (0, 0.3, 1, 3)."""
    points = {}
    for (algo, method, alpha), runs in groups.items():
        value = stat(r.scores.get("avg long") for r in runs if not r.failed)
        if value is not None and (method == "solopo" or method == "short_po"):
            points.setdefault(algo, {})[0.0 if method == "short_po" else alpha] = value
    points = {algo: p for algo, p in points.items() if len(p) > 1}
    if not points:
        return None
    alphas = sorted({a for p in points.values() for a in p})
    fig, ax = plt.subplots(figsize=(6, 4))
    for algo, by_alpha in points.items():
        xs = [alphas.index(a) for a in sorted(by_alpha)]
        ax.errorbar(xs, [by_alpha[a].mean for a in sorted(by_alpha)], yerr=[by_alpha[a].std for a in sorted(by_alpha)],
                    marker="o", capsize=3, label=algo)
    ax.set_xticks(range(len(alphas)), [f"{a:g}" + (" (short_po)" if a == 0 else "") for a in alphas])
    ax.set(xlabel="SoLo-RA alpha", ylabel="avg long-context sub-EM (%)", title="Score vs alpha (mean ± std over seeds)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
