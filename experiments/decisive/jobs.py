"""The jobs of the decisive study, in the order they run, and the setting a finished run belongs to.

Main rows: Short-PO, Long-PO, SoLoPO (the paper's form) and SoLoPO-detach (no gradient through the short-context
reward) x DPO, SimPO, ORPO x 5 seeds, in each regime (a: x_short the evidence alone, x_long 4K; b: the paper's 1/7
ratio at the length curve.py chose). Ablations, 3 seeds, in one regime and for the algorithms named: detach_short x
distance (abs, softplus, squared) x alpha (0.1, 0.3, 1, 3), and SoLo-RA on both responses against the chosen one.

The split is fixed before any run: seed s trains on data.source's training world of seed s and is evaluated on the
first eval.n_items questions of its test world (a world of its own: no entity or passage is shared with training),
the same questions for every row of that seed, so every comparison is paired by seed and question.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from experiments.studies.runner import named
from solopo.report.runs import Run

ALGOS = ("dpo", "simpo", "orpo")
PAPER_ALPHA = {"dpo": 3.0, "simpo": 1.0, "orpo": 1.0}  # the paper's best on Qwen2.5-7B-Instruct
REGIMES = ("a", "b")
MAIN_ROWS = ("short_po", "long_po", "solopo", "solopo_detach")  # by priority within a seed
MAIN_SEEDS = (0, 1, 2, 3, 4)
ABLATION_SEEDS = (0, 1, 2)
DISTANCES = ("abs", "softplus", "squared")
ALPHAS = (0.1, 0.3, 1.0, 3.0)
RA_ROWS = ("solopo", "solopo_detach", "solopo_both")
RA_OPTION = {"solopo": "chosen", "solopo_detach": "chosen", "solopo_both": "both"}
METHOD = {"base": "solopo", "short_po": "short_po", "long_po": "long_po", **{row: "solopo" for row in RA_ROWS}}


@dataclass(frozen=True)
class Job:
    regime: str
    row: str
    algo: str | None  # None for base (evaluation only)
    alpha: float | None  # rows with SoLo-RA only
    seed: int
    distance: str = "abs"
    lengths: tuple[str, ...] = field(default=(), compare=False)  # regime (b): the overrides curve.py chose

    @property
    def name(self) -> str:
        parts = [self.regime, self.row] + ([self.algo] if self.algo else [])
        parts += [self.distance] if self.row in RA_ROWS and self.distance != "abs" else []
        parts += [f"a{self.alpha:g}"] if self.alpha is not None else []
        return "-".join(parts + [f"s{self.seed}"])

    @property
    def sampling_key(self) -> tuple:
        """Jobs with one key sample the same pairs: the first samples and caches them, the others wait for it."""
        return self.regime, self.seed, {"base": "none", "long_po": "long"}.get(self.row, "short")

    @property
    def samples(self) -> bool:
        return self.row != "base"

    def overrides(self) -> list[str]:
        out = [f"experiment=decisive/{self.regime}", f"seed={self.seed}", *self.lengths]
        if self.row == "base":
            return out
        out += [f"method={METHOD[self.row]}", f"algo={self.algo}"]
        if self.row in RA_ROWS:
            out += [f"ra={RA_OPTION[self.row]}", f"ra.alpha={float(self.alpha)!r}", f"ra.distance={self.distance}",
                    f"ra.detach_short={str(self.row == 'solopo_detach').lower()}"]
        return out

    def command(self, root: Path, python: str = "python", extra: tuple[str, ...] = ()) -> list[str]:
        entry = "solopo.evaluate" if self.row == "base" else "solopo.run"
        return [python, "-m", entry, *self.overrides(), *extra, f"hydra.run.dir={root / self.name}"]


def main_jobs(regime: str, seeds: tuple[int, ...] = MAIN_SEEDS) -> list[Job]:
    """Seed by seed (a study cut short keeps whole seeds): the base model, then each main row for each algorithm."""
    jobs = []
    for seed in seeds:
        jobs.append(Job(regime, "base", None, None, seed))
        jobs += [Job(regime, row, algo, PAPER_ALPHA[algo] if row in RA_ROWS else None, seed)
                 for row in MAIN_ROWS for algo in ALGOS]
    return jobs


def ablation_jobs(regime: str, algos: tuple[str, ...], seeds: tuple[int, ...] = ABLATION_SEEDS) -> list[Job]:
    """detach_short x distance x alpha, then SoLo-RA on both responses at the paper's alpha, seed by seed."""
    jobs = []
    for seed in seeds:
        for algo in algos:
            jobs += [Job(regime, row, algo, alpha, seed, distance) for row in ("solopo", "solopo_detach")
                     for distance in DISTANCES for alpha in ALPHAS]
            jobs.append(Job(regime, "solopo_both", algo, PAPER_ALPHA[algo], seed))
    return jobs


def study_jobs(regimes: tuple[str, ...] = REGIMES, ablation_regime: str = "a",
               ablation_algos: tuple[str, ...] = ("simpo",), main_seeds: tuple[int, ...] = MAIN_SEEDS,
               ablation_seeds: tuple[int, ...] = ABLATION_SEEDS) -> list[Job]:
    """Every job once, by priority: the main rows of each regime, then the ablations."""
    jobs = [job for regime in regimes for job in main_jobs(regime, main_seeds)]
    if ablation_regime in regimes:
        jobs += ablation_jobs(ablation_regime, ablation_algos, ablation_seeds)
    return list(dict.fromkeys(jobs))  # an ablation cell at the paper's alpha is a main row's job


def with_lengths(jobs: list[Job], regime: str, lengths: list[str]) -> list[Job]:
    """The jobs, those of ``regime`` with its length overrides."""
    return [replace(j, lengths=tuple(lengths)) if j.regime == regime else j for j in jobs]


def select(jobs: list[Job], names: tuple[str, ...] = ()) -> list[Job]:
    """The jobs whose name matches one of the shell patterns (all when none), in the study's order."""
    return [j for j in jobs if named(j.name, names)]


BASE = "-"  # the algorithm of the base model


def place(run: Run) -> tuple:
    """(regime, algorithm, row, alpha, distance) of a run, from its config (its preset, method and SoLo-RA)."""
    regime = "b" if run.config.get("data", {}).get("short_len") else "a"
    if run.evaluated_only:
        return regime, BASE, "base", None, None
    method, ra = run.config.get("method", {}), run.config.get("ra", {})
    row = method.get("name", "?")
    if row == "solopo":
        row = "solopo_both" if "rejected" in ra.get("responses", []) else \
            "solopo_detach" if ra.get("detach_short") else "solopo"
    algo = str(run.config.get("algo", {}).get("_target_", "?")).rsplit(".", 1)[-1].lower()
    use_ra = method.get("use_ra")
    return regime, algo, row, float(ra["alpha"]) if use_ra else None, ra.get("distance") if use_ra else None
