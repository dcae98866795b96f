"""The jobs of the paper_mini study: one (row, algorithm, alpha, seed) each, in the order they should run; and
the row a finished run belongs to.

Rows are the presets conf/experiment/paper_mini/<row>.yaml; `base` is the untrained model (evaluation only).
The order puts the whole table at the first seed before the extra seeds of the main comparison, so a run
cut short by its deadline loses the least important jobs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.studies.runner import named
from solopo.job_checks import for_evaluation
from solopo.report.runs import Run

ALGOS = ("dpo", "simpo", "orpo")
PAPER_ALPHA = {"dpo": 3.0, "simpo": 1.0, "orpo": 1.0}  # the paper's best alpha on Qwen2.5-7B-Instruct
ALPHAS = (0.3, 1.0, 3.0)  # the alpha sweep of the solopo row
ROWS = ("base", "short_po", "long_po", "solopo", "expand_long", "solopo_both", "solopo_detach")  # first seed, in order
# Repeated at every seed, by priority: the main comparison (SoLoPO and its no-gradient-to-the-short-side variant
# against the strongest baseline, Short-PO), then long_po last, since on 4K contexts the base model rarely answers
# right, so its pairs (sampled on x_long, the most expensive sampling of the study) may not exist at all.
SEEDED_ROWS = ("solopo", "solopo_detach", "short_po", "expand_long", "long_po")
RA_ROWS = ("solopo", "solopo_both", "solopo_detach")  # rows whose alpha matters


@dataclass(frozen=True)
class Job:
    row: str
    algo: str | None  # None for base (no training)
    alpha: float | None  # SoLo-RA weight, rows with SoLo-RA only
    seed: int

    @property
    def name(self) -> str:
        parts = [self.row] + ([self.algo] if self.algo else []) + ([f"a{self.alpha:g}"] if self.alpha is not None else [])
        return "-".join(parts + [f"s{self.seed}"])

    @property
    def sampling_key(self) -> tuple[int, str]:
        """Jobs with the same key sample the same pairs (or, for base, need nothing cached): the first one
        samples and caches them, the others wait for it. The algorithm and alpha do not change the pairs."""
        context = {"base": "none", "long_po": "long"}.get(self.row, "short")
        return self.seed, context

    @property
    def samples(self) -> bool:
        """Whether the job samples pairs (every training run; base only evaluates)."""
        return self.sampling_key[1] != "none"

    @property
    def timing_key(self) -> tuple[str]:
        """Jobs of one row take about as long (the launcher's estimate of a job is its row's longest so far)."""
        return (self.row,)

    def overrides(self) -> list[str]:
        out = [f"experiment=paper_mini/{self.row}", f"seed={self.seed}"]
        if self.algo:
            out.append(f"algo={self.algo}")
        if self.alpha is not None:
            out.append(f"ra.alpha={float(self.alpha)!r}")  # a float, as in conf/ra, so runs group by value
        return out

    def command(self, root: Path, python: str = "python", extra: tuple[str, ...] = ()) -> list[str]:
        if self.row != "base":
            return [python, "-m", "solopo.run", *self.overrides(), *extra, f"hydra.run.dir={root / self.name}"]
        # extra: the overrides of every job (the CPU check's sizes), of which the evaluation takes those it reads
        overrides = for_evaluation([*self.overrides(), *extra]) if extra else self.overrides()
        return [python, "-m", "solopo.evaluate", *overrides, f"hydra.run.dir={root / self.name}"]


def study_jobs(seeds: tuple[int, ...] = (0, 1, 2), rows: tuple[str, ...] = ROWS,
               seeded_rows: tuple[str, ...] = SEEDED_ROWS, alphas: tuple[float, ...] = ALPHAS) -> list[Job]:
    """Every job, by priority: all rows at the first seed (paper alpha first, then the rest of the sweep),
    then the seeded rows at the other seeds."""
    first, *others = seeds
    jobs = []
    for row in rows:
        jobs += [Job(row, None, None, first)] if row == "base" else [
            Job(row, algo, PAPER_ALPHA[algo] if row in RA_ROWS else None, first) for algo in ALGOS]
    if "solopo" in rows:
        jobs += [Job("solopo", algo, alpha, first) for algo in ALGOS for alpha in alphas if alpha != PAPER_ALPHA[algo]]
    for row in seeded_rows:
        jobs += [Job(row, algo, PAPER_ALPHA[algo] if row in RA_ROWS else None, seed) for seed in others for algo in ALGOS]
    return jobs


def select(jobs: list[Job], only: set[str] | None = None, algos: set[str] | None = None,
           names: tuple[str, ...] = ()) -> list[Job]:
    """The jobs of the rows in ``only`` and the algorithms in ``algos`` (base has none and is kept), and, when
    ``names`` is given, whose name matches one of its shell patterns (``long_po-*-s0``); in the study's order."""
    return [j for j in jobs if (not only or j.row in only) and (not algos or j.algo is None or j.algo in algos)
            and named(j.name, names)]


BASE = "-"  # the algorithm column of the base model


def place(run: Run) -> tuple[str, str, float | None]:
    """(algorithm, row, alpha) of a run, from its config: the method, solopo_both when SoLo-RA also covers the
    rejected response, solopo_detach when SoLo-RA passes no gradient to the short-context reward, alpha where
    SoLo-RA is on; an evaluation-only run (`python -m solopo.evaluate`) is the base model."""
    if run.evaluated_only:
        return BASE, "base", None
    method, ra = run.config.get("method", {}), run.config.get("ra", {})
    row = method.get("name", "?")
    if row == "solopo" and "rejected" in ra.get("responses", []):
        row = "solopo_both"
    if row == "solopo" and ra.get("detach_short"):
        row = "solopo_detach"
    algo = str(run.config.get("algo", {}).get("_target_", "?")).rsplit(".", 1)[-1]
    return algo, row, float(ra["alpha"]) if method.get("use_ra") else None
