"""The decisive study's claims and their verdicts, from paired comparisons over seeds and questions.

A comparison of two settings of one regime and algorithm takes the seeds both ran and, in each, the questions both
were asked (the same by the split's rule); a question's score is its mean sub-EM over the long-context cases both
runs were asked (a main row's every length but the evidence alone at every depth; with an ablation cell, evaluated at
its training length only, those cases). solopo.report.stats.paired_bootstrap gives the mean difference and its 95%
interval over questions and seeds; solopo.report.stats.over_seeds the t interval over the seeds' mean differences,
which is the wider one with few seeds (the bootstrap resamples 3-5 seeds as if they were many). Verdict on
"better > worse": supported when both intervals lie above 0, contradicted when both lie below, not separated
otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

from solopo.eval.longctx import SHORT, score_rows
from solopo.report.runs import Run
from solopo.report.stats import Change, over_seeds, paired_bootstrap

# (claim, better row, worse row, whose claim): rows at the paper's alpha and the abs distance
# whose: "the paper" (a claim of arXiv 2505.11166), "paper_mini" (this project's earlier, smaller study), "new" (neither
# makes it). SoLoPO-detach: SoLoPO with no gradient through the short-context reward (ra.detach_short=true).
CLAIMS = (
    ("SoLoPO beats Long-PO", "solopo", "long_po", "the paper"),
    ("SoLoPO beats Expand-long (the same short-context pairs, vanilla PO on x_long)", "solopo", "expand_long",
     "the paper"),
    ("SoLoPO beats Short-PO, i.e. SoLo-RA adds to short-context PO", "solopo", "short_po", "the paper"),
    ("SoLoPO-detach beats SoLoPO in the paper's form", "solopo_detach", "solopo", "paper_mini"),
    ("SoLoPO-detach beats Short-PO", "solopo_detach", "short_po", "new"),
    ("SoLoPO-detach beats Long-PO", "solopo_detach", "long_po", "new"),
    ("SoLo-RA on the chosen response beats SoLo-RA on both responses (at the training length, where both-responses "
     "is evaluated)", "solopo", "solopo_both", "the paper"),
)
FIRM_SEEDS = 3  # a verdict on fewer seeds is provisional: the bootstrap over 1-2 seeds barely sees the seeds' spread


def case_scores(run: Run, long_only: bool = True) -> dict[str, dict[tuple[str, str], float]]:
    """Question id -> {(length, depth): the trained model's score} over its long-context cases (or its evidence-only
    case)."""
    table = run.eval.get("trained") or run.eval.get("model") or {}
    cases: dict[str, dict[tuple[str, str], float]] = {}
    for item, length, depth, score in score_rows(table):
        if (length != SHORT) == long_only:
            cases.setdefault(item, {})[(length, depth)] = score
    return cases


def shared_means(mine: dict[tuple, float], theirs: dict[tuple, float]) -> tuple[float, float] | None:
    """Both runs' mean scores over the cases both were asked; None when they share none."""
    shared = sorted(mine.keys() & theirs.keys())
    if not shared:
        return None
    return sum(mine[c] for c in shared) / len(shared), sum(theirs[c] for c in shared) / len(shared)


@dataclass(frozen=True)
class Comparison:
    """better - worse on the seeds both rows ran: the two-level bootstrap (the difference and the interval the tables
    lead with) and the t interval over the seeds' means (None on one seed)."""

    bootstrap: Change
    over_seeds: Change | None
    seeds: int

    def intervals(self) -> list[Change]:
        return [self.bootstrap] + ([self.over_seeds] if self.over_seeds else [])


def paired(better: list[Run], worse: list[Run], long_only: bool = True) -> Comparison | None:
    """better - worse in sub-EM points over the seeds both ran, the questions both were asked and, per question, the
    cases both were asked; None when they share no seed."""
    by_seed = {r.seed: case_scores(r, long_only) for r in worse if not r.failed}
    differences = []
    for run in better:
        if run.failed or run.seed not in by_seed:
            continue
        mine, theirs = case_scores(run, long_only), by_seed[run.seed]
        means = [shared_means(mine[q], theirs[q]) for q in sorted(mine.keys() & theirs.keys())]
        differences.append([100 * (a - b) for a, b in filter(None, means)])
    differences = [d for d in differences if d]
    if not differences:
        return None
    return Comparison(paired_bootstrap(differences), over_seeds(differences), len(differences))


def verdict(comparison: Comparison | None) -> str:
    if comparison is None:
        return "not run"
    intervals = comparison.intervals()
    if all(c.low > 0 for c in intervals):
        return "supported"
    return "contradicted" if all(c.high < 0 for c in intervals) else "not separated"


def verdict_on(comparison: Comparison | None) -> str:
    """The verdict, marked provisional on fewer than FIRM_SEEDS seeds: a cell the study has not yet run at the seeds
    its acceptance asks for must not read as a finding (an ablation cell at seed 0 alone is bootstrapped over its
    questions only and never sees how another training run turns out)."""
    word = verdict(comparison)
    return word if comparison is None or comparison.seeds >= FIRM_SEEDS else f"{word}, provisional"


def intervals_text(comparison: Comparison, unit: str = "") -> str:
    """"+4.8 [+0.2, +8.9], seeds' t [-1.5, +11.2]": the difference (then ``unit``), the bootstrap's interval, the t
    interval over the seeds' means."""
    boot, seeds = comparison.bootstrap, comparison.over_seeds
    text = f"{boot.difference:+.1f}{unit} [{boot.low:+.1f}, {boot.high:+.1f}]"
    return text + (f", seeds' t [{seeds.low:+.1f}, {seeds.high:+.1f}]" if seeds else "")


def describe(comparison: Comparison | None) -> str:
    if comparison is None:
        return "no shared seed"
    seeds = comparison.seeds
    return (f"{intervals_text(comparison, ' points')}, {seeds} seed{'s' * (seeds != 1)}, {comparison.bootstrap.n} "
            "question-seed pairs")
