"""The runs of a study as the report sees them: each placed by its config (algorithm, method, alpha, seed)
with its scores, training time and memory, or the reason it failed; grouped over seeds.

A run is placed by its config: the algorithm, the method (solopo_both when SoLo-RA also covers the rejected
response, solopo_detach when SoLo-RA passes no gradient to the short-context reward), alpha where SoLo-RA is
on, and the seed; an evaluation-only run (`python -m solopo.evaluate`) is the base model. Scores are sub-EM (%) of the trained model; `gain` is a run's gain over its own evaluation
before training.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from solopo.report_seeds import Stat, stat

METHODS = ("base", "short_po", "long_po", "expand_long", "solopo", "solopo_both", "solopo_detach")  # table order
RA_METHODS = ("solopo", "solopo_both", "solopo_detach")  # the methods whose runs differ by alpha
BASE = "-"  # the algorithm column of the base model
@dataclass(frozen=True)
class Run:
    algo: str
    method: str
    alpha: float | None  # SoLo-RA weight where SoLo-RA is on
    seed: int
    scores: dict[str, float]  # sub-EM (%) by length, and "avg long"
    gain: float | None  # avg long after training minus before it
    pairs: int | None
    fit_s: float | None
    peak_gib: float | None
    failed: str | None  # the reason, for a run that failed


def to_run(result: dict) -> Run:
    config = result.get("config", {})
    method, ra = config.get("method", {}), config.get("ra", {})
    tables = result.get("eval", {})
    table = tables.get("trained") or tables.get("model")
    evaluated_only = "model" in tables and "trained" not in tables
    name = "base" if evaluated_only else method.get("name", "?")
    if name == "solopo" and "rejected" in ra.get("responses", []):
        name = "solopo_both"
    if name == "solopo" and ra.get("detach_short"):
        name = "solopo_detach"
    scores = {}
    if table:
        scores = {str(k): 100 * v for k, v in table["by_length"].items()}
        scores["avg long"] = 100 * table["average_long"]
    base = tables.get("base")
    timings, metrics = result.get("timings", {}), result.get("metrics", {})
    return Run(
        algo=BASE if evaluated_only else str(config.get("algo", {}).get("_target_", "?")).rsplit(".", 1)[-1],
        method=name, alpha=float(ra["alpha"]) if method.get("use_ra") and not evaluated_only else None,
        seed=config.get("seed", 0), scores=scores,
        gain=100 * (table["average_long"] - base["average_long"]) if table and base else None,
        pairs=result.get("data", {}).get("train", {}).get("pairs", 0 if _reason(result) == "no pairs" else None),
        fit_s=timings.get("fit_s"), peak_gib=metrics.get("train/peak_mem_gib"),
        failed=_reason(result))


def _reason(result: dict) -> str | None:
    return result["failed"].get("reason", "?") if "failed" in result else None


def group(runs: list[Run]) -> dict[tuple, list[Run]]:
    """(algo, method, alpha) -> its runs (one per seed), in table order."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.algo, run.method, run.alpha)].append(run)
    def order(key: tuple) -> tuple:  # the base model first, then by algorithm, method, alpha
        return key[0] != BASE, key[0], METHODS.index(key[1]) if key[1] in METHODS else len(METHODS), key[2] or 0

    return {key: groups[key] for key in sorted(groups, key=order)}


def scores_of(runs: list[Run], column: str) -> Stat | None:
    return stat(r.scores.get(column) for r in runs if not r.failed)


def on_shared_seeds(*sides: list[Run]) -> tuple[list[list[Run]], set[int]]:
    """Each side's runs restricted to the seeds where every side has a result (each seed has its own questions,
    so means over different seeds do not compare), and those seeds; the sides as they are when none is shared."""
    shared = set.intersection(*({r.seed for r in runs if not r.failed} for runs in sides))
    if not shared:
        return list(sides), shared
    return [[r for r in runs if r.seed in shared] for runs in sides], shared


def failures(runs: list[Run]) -> str:
    return ", ".join(sorted({r.failed for r in runs if r.failed}))


def score_cell(runs: list[Run], column: str = "avg long") -> str:
    """mean ± std of the runs that ended, or why none did."""
    value = scores_of(runs, column)
    return cell(value) if value is not None else f"failed: {failures(runs)}" if failures(runs) else ""


def main_alpha(groups: dict, algo: str, paper: dict) -> float | None:
    """The paper's best alpha for ``algo`` when it was run, else the alpha run with the most seeds."""
    alphas = {key[2]: len(runs) for key, runs in groups.items() if key[:2] == (algo, "solopo")}
    best = paper.get("best_alpha", {}).get(algo)
    return best if best in alphas else max(alphas, key=lambda a: (alphas[a], a == 1.0), default=None)


def cell(value: Stat | None, digits: int = 1) -> str:
    return "" if value is None else value.format(digits)
