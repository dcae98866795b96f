"""The jobs of the decisive study, in the order they run, the units they are grouped in, and the setting a finished
run belongs to.

Main rows: Short-PO, Long-PO, SoLoPO (the paper's form) and SoLoPO-detach (no gradient through the short-context
reward) x DPO, SimPO, ORPO x 5 seeds, in each regime (a: x_short the evidence alone, x_long 4K; b: the paper's 1/7
ratio at the length curve.py chose), each evaluated at every length and depth of its preset. Ablations, 3 seeds, in
one regime and for the algorithms named: detach_short x distance (abs, softplus, squared) x alpha (0.1, 0.3, 1, 3), and
SoLo-RA on both responses against the chosen one, each evaluated on the evidence alone and at its training length
(every depth): their comparisons are paired on the cases both runs were asked (claims.py). Expand-long (pairs sampled
on x_short, vanilla PO on x_long) is a row of the cost table and of one claim, not a main row: SimPO, 3 seeds, both
regimes, evaluated as a main row is; it trains on the short-context pairs its seed's other rows sample.

The base model is no job of its own: every trained run evaluates it before training, on the same questions, and the
first of a seed computes the table that the others read from the evaluation cache (report.py takes the base row from
there). The split is fixed before any run: seed s trains on data.source's training world of seed s and is evaluated
on the first eval.n_items questions of its test world (a world of its own: no entity or passage is shared with
training), the same questions for every row of that seed, so every comparison is paired by seed and question.
"""
from __future__ import annotations

import json
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
COST_ROWS = ("expand_long",)  # the cost table's and one claim's (claims.py), at COST_SEEDS and COST_ALGOS
COST_SEEDS = (0, 1, 2)
COST_ALGOS = ("simpo",)  # the cost table's algorithm: SoLoPO's pipeline against Long-PO's and Expand-long's
METHOD = {"short_po": "short_po", "long_po": "long_po", "expand_long": "expand_long",
          **{row: "solopo" for row in RA_ROWS}}
# An ablation cell's evaluation: the evidence alone and its training length at every depth; a main row's is every
# length (the "each at every length and depth" is about the main rows). Hydra resolves the interpolation.
ABLATION_LENGTHS = "eval.lengths=[short,${data.long_len}]"


@dataclass(frozen=True)
class Job:
    regime: str
    row: str
    algo: str
    alpha: float | None  # rows with SoLo-RA only
    seed: int
    distance: str = "abs"
    lengths: tuple[str, ...] = field(default=(), compare=False)  # regime (b): the overrides curve.py chose

    @property
    def name(self) -> str:
        parts = [self.regime, self.row, self.algo]
        parts += [self.distance] if self.row in RA_ROWS and self.distance != "abs" else []
        parts += [f"a{self.alpha:g}"] if self.alpha is not None else []
        return "-".join(parts + [f"s{self.seed}"])

    @property
    def sampling_key(self) -> tuple:
        """Jobs with one key sample the same pairs: the first samples and caches them, the others wait for it."""
        return self.regime, self.seed, "long" if self.row == "long_po" else "short"

    @property
    def samples(self) -> bool:
        """Every job trains on sampled pairs (the first of its key samples them)."""
        return True

    @property
    def timing_key(self) -> tuple[str, str]:
        """Jobs of one regime and row take about as long (regime (b) evaluates at three lengths, up to 6K, where
        (a) evaluates at 4K: its jobs take ~1.5 times as long); the launcher's estimate is the key's longest so far."""
        return self.regime, self.row

    @property
    def main(self) -> bool:
        """A main row (evaluated at every length); an ablation cell otherwise."""
        return self.row in MAIN_ROWS and (self.row not in RA_ROWS or (self.alpha, self.distance) == (
            PAPER_ALPHA[self.algo], "abs"))

    @property
    def every_length(self) -> bool:
        """Evaluated at every length and depth of its preset (a main row, Expand-long); an ablation cell on the
        evidence alone and at its training length."""
        return self.main or self.row in COST_ROWS

    @property
    def unit(self) -> tuple:
        """The jobs a part runs whole: a main row's seed and algorithm (its four rows: every claim of that seed), an
        Expand-long job alone (it fills what the others leave of a part), an ablation's seed, algorithm, distance and
        detach_short (its alphas; with abs and the paper's form also the both-responses cell)."""
        if self.main:
            return self.regime, self.seed, self.algo
        if self.row in COST_ROWS:
            return self.regime, self.seed, self.algo, self.row
        return self.regime, self.seed, self.algo, self.distance, self.row == "solopo_detach"

    @property
    def label(self) -> str:
        """Its unit in short, within its regime and seed: "dpo", "expand_long simpo", "simpo abs detach"."""
        if self.main:
            return self.algo
        if self.row in COST_ROWS:
            return f"{self.row} {self.algo}"
        return f"{self.algo} {self.distance}{' detach' if self.row == 'solopo_detach' else ''}"

    def overrides(self) -> list[str]:
        lengths = [x for x in self.lengths if self.every_length or not x.startswith("eval.lengths=")]
        out = [f"experiment=decisive/{self.regime}", f"seed={self.seed}", *lengths,
               f"method={METHOD[self.row]}", f"algo={self.algo}"]
        if self.row in RA_ROWS:
            out += [f"ra={RA_OPTION[self.row]}", f"ra.alpha={float(self.alpha)!r}", f"ra.distance={self.distance}",
                    f"ra.detach_short={str(self.row == 'solopo_detach').lower()}"]
        return out + ([] if self.every_length else [ABLATION_LENGTHS])

    def command(self, root: Path, python: str = "python", extra: tuple[str, ...] = ()) -> list[str]:
        return [python, "-m", "solopo.run", *self.overrides(), *extra, f"hydra.run.dir={root / self.name}"]


def main_jobs(regime: str, seeds: tuple[int, ...] = MAIN_SEEDS) -> list[Job]:
    """Seed by seed and, within a seed, algorithm by algorithm (a study cut short keeps whole comparisons): each main
    row. The first job of a seed samples its pairs and evaluates the base model; the others read both from the cache."""
    return [Job(regime, row, algo, PAPER_ALPHA[algo] if row in RA_ROWS else None, seed)
            for seed in seeds for algo in ALGOS for row in MAIN_ROWS]


def cost_jobs(regime: str, seeds: tuple[int, ...] = COST_SEEDS, algos: tuple[str, ...] = COST_ALGOS) -> list[Job]:
    """Expand-long per seed and algorithm: after the main rows, whose first job of a seed samples its pairs."""
    return [Job(regime, row, algo, None, seed) for seed in seeds for algo in algos for row in COST_ROWS]


def ablation_jobs(regime: str, algos: tuple[str, ...], seeds: tuple[int, ...] = ABLATION_SEEDS) -> list[Job]:
    """Seed by seed, distance by distance: detach_short x alpha, and with abs SoLo-RA on both responses at the paper's
    alpha."""
    jobs = []
    for seed in seeds:
        for algo in algos:
            for distance in DISTANCES:
                jobs += [Job(regime, row, algo, alpha, seed, distance) for row in ("solopo", "solopo_detach")
                         for alpha in ALPHAS]
                if distance == "abs":
                    jobs.append(Job(regime, "solopo_both", algo, PAPER_ALPHA[algo], seed))
    return jobs


def study_jobs(regimes: tuple[str, ...] = REGIMES, ablation_regime: str = "a",
               ablation_algos: tuple[str, ...] = ("simpo",), main_seeds: tuple[int, ...] = MAIN_SEEDS,
               ablation_seeds: tuple[int, ...] = ABLATION_SEEDS) -> list[Job]:
    """Every job once, by priority: the main rows seed by seed, each seed in every regime before the next seed (a
    study cut short has both regimes at the same seeds), the ablations, then Expand-long (estimate.parts puts each of
    its jobs in the first part with room, so it changes no other job's part)."""
    jobs = [job for seed in main_seeds for regime in regimes for job in main_jobs(regime, (seed,))]
    if ablation_regime in regimes:
        jobs += ablation_jobs(ablation_regime, ablation_algos, ablation_seeds)
    jobs += [job for regime in regimes for job in cost_jobs(regime)]
    return list(dict.fromkeys(jobs))  # an ablation cell at the paper's alpha and abs is a main row's job


def units(jobs: list[Job]) -> list[list[Job]]:
    """The jobs grouped by Job.unit, in the order of each unit's first job."""
    grouped: dict[tuple, list[Job]] = {}
    for job in jobs:
        grouped.setdefault(job.unit, []).append(job)
    return list(grouped.values())


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


def pairs_sample(run: Run) -> str:
    """Which sample of training pairs a run trained on: its record of the sampling (pairs kept, share of right samples,
    mean F1, unfinished samples; not its seconds), which every run reading one cache entry copies. Runs of one regime,
    seed and context need not share one: a job that found the entry made under an older transformers sampled again
    (regime (a)'s ablation cells at seeds 0-2, regime (b)'s Expand-long at seed 0). "{}" where the run recorded none."""
    return json.dumps({key: value for key, value in run.sampling.items() if key != "seconds"}, sort_keys=True)
