"""The decisive study's claims and their verdicts, from paired comparisons over seeds and questions.

A comparison of two settings of one regime and algorithm takes the seeds both ran and, in each, the questions both
were asked (the same by the split's rule); a question's score is its mean sub-EM over the long-context cases both
runs were asked (a main row's every length but the evidence alone at every depth; with an ablation cell, evaluated at
its training length only, those cases). solopo.report.stats.paired_bootstrap gives the mean difference and its 95%
interval over questions and seeds. Verdict on "better > worse": supported when the interval lies above 0,
contradicted when it lies below, not separated when it holds 0.
"""
from __future__ import annotations

from solopo.eval.longctx import SHORT, score_rows
from solopo.report.runs import Run
from solopo.report.stats import Change, paired_bootstrap

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
    ("SoLo-RA on the chosen response beats SoLo-RA on both responses", "solopo", "solopo_both", "the paper"),
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


def paired(better: list[Run], worse: list[Run], long_only: bool = True) -> Change | None:
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
    return paired_bootstrap(differences) if differences else None


def verdict(change: Change | None) -> str:
    if change is None:
        return "not run"
    return "supported" if change.low > 0 else "contradicted" if change.high < 0 else "not separated"


def verdict_on(change: Change | None, seeds: int) -> str:
    """The verdict, marked provisional on fewer than FIRM_SEEDS seeds: a cell the study has not yet run at the seeds
    its acceptance asks for must not read as a finding (an ablation cell at seed 0 alone is bootstrapped over its
    questions only and never sees how another training run turns out)."""
    word = verdict(change)
    return word if change is None or seeds >= FIRM_SEEDS else f"{word}, provisional"


def seeds_of(better: list[Run], worse: list[Run]) -> int:
    return len({r.seed for r in better if not r.failed} & {r.seed for r in worse if not r.failed})


def describe(change: Change | None, seeds: int) -> str:
    if change is None:
        return "no shared seed"
    return (f"{change.difference:+.1f} [{change.low:+.1f}, {change.high:+.1f}] points, {seeds} "
            f"seed{'s' * (seeds != 1)}, {change.n} question-seed pairs")
