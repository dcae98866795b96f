"""The rows of the efficiency tables as summary.py reads them (a measured cell, its status, the ratios between cells)
and how its tables print them."""
from __future__ import annotations

import json
from pathlib import Path

H200_PEAK_TFLOPS = 790.0  # bf16 matmul peak measured on the H200 (shared GPU notes)
def load(results: Path, name: str) -> list[dict]:
    path = results / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def cell(rows: list[dict], **key) -> dict | None:
    """The last row matching key (a later measurement of the same cell wins)."""
    found = [r for r in rows if all(r.get(k) == v for k, v in key.items())]
    return found[-1] if found else None


def ok(row: dict | None) -> bool:
    return bool(row) and row.get("status") == "ok"


def ratio(a: dict | None, b: dict | None, field: str = "step_s") -> float | None:
    return a[field] / b[field] if ok(a) and ok(b) else None


def flops(row: dict) -> float:
    """Useful FLOPs of one step (the bench's count), back from its TFLOP/s and step time."""
    return row["tflops"] * row["step_s"]


def fmt_step(row: dict | None) -> str:
    if not row:
        return "-"
    if not ok(row):
        return str(row.get("status"))
    return f"{row['step_s']:.3g} s, {row['peak_gib']:.1f} GiB"


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def length_label(n: int) -> str:
    return f"{n // 1024}K"
