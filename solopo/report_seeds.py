"""Runs that differ only in their seed, collapsed into one row: each number becomes mean ± std over the seeds.

The seed is `seed` and every key that follows it (data.source.seed, data.sampling.seed): they vary together,
so none of them is a factor of the comparison.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Iterable

SEED_KEY = re.compile(r"(^|\.)seed$")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value) of n values."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return self.format(1)

    def format(self, digits: int) -> str:
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")


def stat(values: Iterable) -> Stat | None:
    """The Stat of the finite numbers among ``values``; None when there are none."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers:
        return None
    mean = sum(numbers) / len(numbers)
    var = sum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1) if len(numbers) > 1 else 0.0
    return Stat(mean, math.sqrt(var), len(numbers))


def is_seed_key(key: str) -> bool:
    return bool(SEED_KEY.search(key))


def aggregate(rows: list[dict], varying: list[str]) -> tuple[list[str], list[dict]]:
    """The varying keys without the seed ones, and one row per group of runs equal in those keys: the keys,
    `seeds` (the runs in the group), each other numeric column as a Stat, and `status` when some runs failed
    ("1 of 3 failed: no pairs"). Groups keep the order of their first run."""
    keys = [k for k in varying if not is_seed_key(k)]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(_number(row.get(k)), sort_keys=True, default=str) for k in keys), []).append(row)
    out = []
    for members in groups.values():
        merged = {k: members[0].get(k) for k in keys}
        merged["seeds"] = len(members)
        columns = dict.fromkeys(c for m in members for c in m if c not in keys and c != "status" and not is_seed_key(c))
        for column in columns:
            value = stat(m.get(column) for m in members)
            if value is not None:
                merged[column] = value
        failed = [m["status"].removeprefix("failed: ") for m in members if m.get("status", "ok") != "ok"]
        if failed:
            merged["status"] = f"{len(failed)} of {len(members)} failed: {', '.join(sorted(set(failed)))}"
        out.append(merged)
    return keys, out


def _number(value):
    """1 and 1.0 are the same setting (ra.alpha=1 on the command line, 1.0 in a config file)."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def csv_cells(row: dict) -> dict:
    """A row for a CSV file: a Stat becomes two numbers, the mean in its column and the std in `<column> std`."""
    out = {}
    for key, value in row.items():
        if isinstance(value, Stat):
            out[key], out[f"{key} std"] = round(value.mean, 4), round(value.std, 4)
        else:
            out[key] = value
    return out
