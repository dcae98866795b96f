"""The runs a report reads, one record each, and their grouping over seeds.

A run directory holds results.json (written by `python -m solopo.run` or `python -m solopo.evaluate`), or
failed.json ({"reason", "detail", "config"}, as a job launcher records a run that failed), so a missing result is
never silent. Runs that differ only in their seed form a group; each number of a group is a Stat: mean ± sample
std over its seeds.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from solopo.scoring import points
from solopo.training.results import FAILED, unfinished

SEED_KEY = re.compile(r"(^|\.)seed$")  # seed, data.source.seed, data.sampling.seed: they vary together


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


@dataclass(frozen=True)
class Run:
    """One run: its composed config, evaluation tables (base, trained, or model for an evaluation-only run; held-out
    questions in ``eval``, a benchmark's in ``benchmark``), metrics, timings, train pairs and the sequences each split's pairs hold, or for a failed run the failure
    record."""

    path: Path  # the run directory
    config: dict[str, Any]
    eval: dict[str, dict]
    metrics: dict[str, float]
    timings: dict[str, float]
    pairs: int | None
    failure: dict | None  # failed.json: {"reason", "detail", ...}
    sequences: dict = field(default_factory=dict)  # results.json's: {"train": ["short/chosen", ...], "val": ...}
    sampling: dict = field(default_factory=dict)  # how the training pairs were sampled (data.train.sampling), if so
    benchmark: dict = field(default_factory=dict)  # results.json's benchmark tables (eval=longbench, ruler) by model

    @property
    def failed(self) -> str | None:
        """Why the run failed (its reason), None for a run that ended."""
        return self.failure.get("reason", "?") if self.failure is not None else None

    @property
    def seed(self) -> int:
        return self.config.get("seed", 0)

    @property
    def evaluated_only(self) -> bool:
        """A run of `python -m solopo.evaluate`: the model as loaded, not trained."""
        return "model" in self.eval and "trained" not in self.eval

    @property
    def scores(self) -> dict[str, float]:
        """Sub-EM (%) of the final model (trained, else the model as evaluated) by length, and "avg long"."""
        table = self.eval.get("trained") or self.eval.get("model")
        if not table:
            return {}
        return {**{str(k): points(v) for k, v in table["by_length"].items()}, "avg long": points(table["average_long"])}

    @property
    def gain(self) -> float | None:
        """avg long after training minus before it (points), from the run's own evaluation of the base model."""
        table, base = self.eval.get("trained"), self.eval.get("base")
        return points(table["average_long"] - base["average_long"]) if table and base else None


def load_run(path: Path) -> Run:
    """The Run of results.json or failed.json at ``path``; a file that is not JSON is an error naming it."""
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):  # a list, a string or null: not a run's record, whose fields are read below
        raise ValueError(f"{path}: not a run's record (a JSON object), but {type(data).__name__}")
    failed = path.name == FAILED
    if not failed and "config" not in data:  # every results.json solopo writes places its run by its config
        raise ValueError(f"{path}: not a run's record (no config: every key of it would read as varying)")
    failure = data if failed else unfinished(data)
    return Run(path=path.parent, config=data.get("config", {}), eval={} if failure else data.get("eval", {}),
               metrics=data.get("metrics", {}), timings=data.get("timings", {}),
               pairs=data.get("data", {}).get("train", {}).get("pairs"), failure=failure,
               sequences={} if failure else data.get("sequences", {}),
               sampling=data.get("data", {}).get("train", {}).get("sampling") or {},
               benchmark={} if failure else data.get("benchmark") or {})


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run in the directories given or at any depth below them (Hydra's outputs/DATE/TIME, a sweep's
    multirun/DATE/TIME/N), in path order; a run's own folders are not searched. A missing directory, or none with a
    run, is a ValueError naming the paths."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise ValueError(f"{path}: no such directory")
        found += [load_run(_outcome(run_dir)) for run_dir in _run_dirs(path)]
    if not found:
        raise ValueError(f"no results.json or failed.json under {', '.join(map(str, paths))}")
    return found


def unrecorded(paths: list[Path]) -> list[Path]:
    """The run directories Hydra made (a .hydra folder) under ``paths`` that hold neither results.json nor failed.json:
    runs ended without a word (killed, out of memory), or still running."""
    return sorted(hydra.parent for path in paths if path.is_dir() for hydra in path.rglob(".hydra")
                  if hydra.is_dir() and not _outcome(hydra.parent))


def _run_dirs(path: Path) -> list[Path]:
    if _outcome(path):
        return [path]
    below = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [run_dir for p in below for run_dir in _run_dirs(p)]


def _outcome(run_dir: Path) -> Path | None:
    """failed.json before results.json: a launcher records a run that wrote its results and then exited non-zero as
    failed."""
    return next((run_dir / name for name in (FAILED, "results.json") if (run_dir / name).exists()), None)


def group(runs: list[Run], key: Callable[[Run], Hashable]) -> dict[Hashable, list[Run]]:
    """key -> its runs, groups in the order of their first run. ``key`` places a run by its setting, never by its
    seed, so that a group is one setting over seeds."""
    groups: dict[Hashable, list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def on_shared_seeds(*sides: list[Run]) -> tuple[list[list[Run]], set[int]]:
    """Each side's runs restricted to the seeds where every side has a result (each seed has its own questions,
    so means over different seeds do not compare), and those seeds; the sides as they are when none is shared."""
    shared = set.intersection(*({r.seed for r in runs if not r.failed} for runs in sides))
    if not shared:
        return list(sides), shared
    return [[r for r in runs if r.seed in shared] for runs in sides], shared


def scores_of(runs: list[Run], column: str) -> Stat | None:
    """The Stat of one score column (a length, or "avg long") over the runs that ended."""
    return stat(r.scores.get(column) for r in runs if not r.failed)


def failures(runs: list[Run]) -> str:
    """The distinct reasons of the runs that failed, e.g. "no pairs, out of memory"."""
    return ", ".join(sorted({r.failed for r in runs if r.failed}))
