"""PNG plots of long-context evaluation tables (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_vs_length(tables: dict[str, dict], path: Path, title: str = "Long-context QA") -> Path:
    """Sub-EM (%) against context length, one line per checkpoint (e.g. base and trained)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, table in tables.items():
        lengths = list(table["by_length"])
        ax.plot(range(len(lengths)), [100 * table["by_length"][n] for n in lengths], marker="o", label=name)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_xlabel("context length (tokens; short = the evidence alone)")
    ax.set_ylabel("sub-EM (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def depth_heatmap(table: dict, path: Path, title: str = "sub-EM (%) by length and evidence depth") -> Path:
    """A length x depth grid of sub-EM (%), each cell annotated with its value."""
    cells = [c for c in table["cells"] if c["depth"] != "-"]
    lengths = sorted({c["length"] for c in cells}, key=int)  # built lengths only: fixed contexts have no depth
    depths = sorted({c["depth"] for c in cells}, key=float)
    grid = [[next((100 * c["sub_em"] for c in cells if c["length"] == n and c["depth"] == d), float("nan"))
             for d in depths] for n in lengths]
    fig, ax = plt.subplots(figsize=(1.2 * len(depths) + 2.5, 0.6 * len(lengths) + 1.8))
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
    ax.set_yticks(range(len(lengths)), lengths)
    ax.set_xlabel("evidence depth (0% = start of the context)")
    ax.set_ylabel("context length (tokens)")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black")
    fig.colorbar(image, ax=ax, label="sub-EM (%)")
    ax.set_title(title)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
