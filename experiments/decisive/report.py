"""The decisive study's report: study.md (main table, claims with paired 95% intervals and verdicts, ablations,
pipeline cost: costs.py) and its plots (accuracy vs length, the mechanism: the chosen response's short and long
rewards per step), from the runs of a study directory.

    python experiments/decisive/report.py /tmp/decisive --out experiments/decisive/results \\
        --readme experiments/decisive/README.md

--readme (repeatable) rewrites each page's `<!-- solopo.report:NAME -->` blocks (runs, verdict, main, claims, cost) with
the generated text: the study's README and the repository's, whose headline is the verdict block.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.decisive.claims import (CLAIMS, FIRM_SEEDS, Comparison, case_scores, describe, intervals_text,  # noqa: E402
                                         paired, verdict, verdict_on)
from experiments.decisive.costs import cost_table  # noqa: E402
from experiments.decisive.curve import CURVE_SEED  # noqa: E402
from experiments.decisive.jobs import (COST_ROWS, MAIN_ROWS, MAIN_SEEDS, PAPER_ALPHA, REGIMES,  # noqa: E402
                                      pairs_sample, place, study_jobs)
from experiments.studies import reports  # noqa: E402
from solopo.report.plots import accuracy_vs_length, score_vs_step  # noqa: E402
from solopo.report.runs import Run, Stat, failures, find_runs, group, scores_of, stat  # noqa: E402
from solopo.report.stats import t_quantile  # noqa: E402
from solopo.report.tables import cell, markdown  # noqa: E402

AVG = "avg long"
MECHANISM = {"ra/chosen_short": "on x_short", "ra/chosen_long": "on x_long",  # metric: its panel's title
             "ra/gap_signed": "gap, x_short - x_long"}
TABLE_ROWS = ("base", *MAIN_ROWS[:2], *COST_ROWS, *MAIN_ROWS[2:], "solopo_both")  # Expand-long beside Long-PO


def main_key(regime: str, algo: str, row: str) -> tuple:
    """The group of a main row: SoLo-RA rows at the paper's alpha and the abs distance."""
    ra = row.startswith("solopo")
    return regime, algo, row, PAPER_ALPHA.get(algo) if ra else None, "abs" if ra else None


def with_base_rows(runs: list[Run]) -> list[Run]:
    """The study's runs and, per regime and seed, the base model's row: the table a main row's run evaluated before
    training (every run of the seed asked the same questions and read the same table from the evaluation cache), where
    no evaluation-only run gives it. curve.py's evaluation (seed CURVE_SEED) is no run of the study."""
    runs = [r for r in runs if r.seed != CURVE_SEED]
    have = {(place(r)[0], r.seed) for r in runs if r.evaluated_only}
    out = list(runs)
    for run in runs:
        regime, algo, row, *_ = where = place(run)
        if run.failed or run.evaluated_only or "base" not in run.eval or (regime, run.seed) in have or \
                row not in MAIN_ROWS or where != main_key(regime, algo, row):
            continue
        out.append(replace(run, eval={"model": run.eval["base"]}, metrics={}, timings={}, pairs=None))
        have.add((regime, run.seed))
    return out


def long_lengths(runs: list[Run]) -> list[str]:
    """The long-context lengths the runs were asked, in the order asked."""
    return list(dict.fromkeys(k for r in runs for k in r.scores if k not in ("short", AVG)))


def spread_cell(value: Stat | None) -> str:
    """"35.0 ± 1.7 [32.9, 37.1]": the mean sub-EM (%) over the seeds' runs ± their std, then the mean's 95% t interval
    over the seeds (mean ± t(n - 1) std / sqrt(n)), within the 0-100 a share can take; the value alone for one run."""
    if value is None or value.n < 2:
        return cell(value)
    half = t_quantile(0.975, value.n - 1) * value.std / math.sqrt(value.n)
    return f"{cell(value)} [{max(value.mean - half, 0.0):.1f}, {min(value.mean + half, 100.0):.1f}]"


def avg_long_cell(runs: list[Run], every: list[str]) -> str:
    """The runs' average long-context sub-EM, naming its lengths where they are fewer than ``every`` (the main rows'
    of its regime): SoLo-RA on both responses, an ablation cell, is asked at its training length only, and its
    average over 4K alone must not read as one over 1K-4K beside the main rows'."""
    text, asked = spread_cell(scores_of(runs, AVG)), long_lengths(runs)
    return text if not text or set(every) <= set(asked) else f"{text} (at {', '.join(asked)} only)"


def main_table(groups: dict, regimes: list[str], algos: list[str]) -> list[str]:
    rows = []
    for regime in regimes:
        mains = [r for algo in algos for row in MAIN_ROWS for r in groups.get(main_key(regime, algo, row), [])]
        every = long_lengths([r for r in mains if not r.failed])
        for algo in algos:
            for row in TABLE_ROWS:
                runs = groups.get((regime, "-", "base", None, None) if row == "base" else main_key(regime, algo, row))
                if not runs or (row == "base" and algo != algos[0]):
                    continue
                ok = [r for r in runs if not r.failed]
                note = f" (+{len(runs) - len(ok)} failed: {failures(runs)})" if len(ok) < len(runs) else ""
                rows.append([regime, "-" if row == "base" else algo, row, f"{len(ok)}{note}",
                             spread_cell(scores_of(ok, "short")), avg_long_cell(ok, every),
                             cell(stat(r.pairs for r in ok), 0)])
    return markdown(["regime", "algo", "method", "seeds", "evidence only [95%]", f"{AVG} [95%]", "pairs"], rows)


@dataclass(frozen=True)
class ClaimCell:
    """One claim in one regime and algorithm: the paired comparison (better - worse), None where no seed is shared."""

    claim: str
    whose: str
    regime: str
    algo: str
    comparison: Comparison | None


@dataclass
class Compared:
    """The study's groups and each paired comparison of two of them, computed once: the claim lines, the verdict
    paragraph and the ablation table ask for the same ones, and each is a bootstrap of 4,000 draws."""

    groups: dict
    done: dict = field(default_factory=dict)

    def between(self, better: tuple, worse: tuple) -> Comparison | None:
        """better - worse (two groups' keys), paired; None where either did not run or they share no seed."""
        if (better, worse) not in self.done:
            a, b = self.groups.get(better), self.groups.get(worse)
            self.done[better, worse] = paired(a, b) if a and b else None
        return self.done[better, worse]


def claim_cells(compared: Compared, regimes: list[str], algos: list[str]) -> list[ClaimCell]:
    """Every claim's paired comparison where both of its rows ran, claim by claim: computed once, for the claim lines
    and the verdict paragraph."""
    cells = []
    for claim, better, worse, whose in CLAIMS:
        for regime in regimes:
            for algo in algos:
                a, b = main_key(regime, algo, better), main_key(regime, algo, worse)
                if compared.groups.get(a) and compared.groups.get(b):
                    cells.append(ClaimCell(claim, whose, regime, algo, compared.between(a, b)))
    return cells


def claim_lines(cells: list[ClaimCell]) -> list[str]:
    """One line per claim, regime and algorithm: the paired difference, its interval, the verdict."""
    return [f"- **{verdict_on(c.comparison)}**: {c.claim} ({c.whose}), regime {c.regime}, {c.algo}: "
            f"{describe(c.comparison)}." for c in cells]


def verdict_paragraph(cells: list[ClaimCell], compared: Compared, regimes: list[str], done: set[str]) -> list[str]:
    """The study's verdict, the headline the repository's README quotes: a lead saying how much of the plan it stands
    on (``done``: the names of the runs that ended) and what a cell and its verdict mean, one line per claim with each
    regime/algorithm cell's paired difference, interval and verdict, then the pairs each method trained on."""
    lead = [plan_state(done), "Each cell: regime/algorithm, the paired difference in average long-context "
            "sub-EM points with two 95% intervals: the bootstrap's over seeds and questions, and the t interval over "
            "the seeds' mean differences (seeds' t), the wider with few seeds; supported where both lie above 0, "
            "contradicted where both lie below, not separated otherwise; provisional on fewer than "
            f"{FIRM_SEEDS} seeds. Whose claim: the paper's, paper_mini's (this project's earlier, smaller study) "
            f"or new. The {sum(1 for c in cells if c.comparison)} cells are each at 95% with no correction for their "
            "number: where two rows do not differ, about one cell in twenty reads supported or contradicted by "
            "chance."]
    lines = []
    for claim, _, _, whose in CLAIMS:
        by_verdict: dict[str, list[str]] = {}
        for c in (c for c in cells if c.claim == claim and c.comparison):
            seeds = c.comparison.seeds
            firm = "" if seeds >= FIRM_SEEDS else ", provisional"
            by_verdict.setdefault(verdict(c.comparison), []).append(
                f"{c.regime}/{c.algo} {intervals_text(c.comparison)} ({seeds} seed{'s' * (seeds != 1)}{firm})")
        if by_verdict:
            found = "; ".join(f"{word} in {', '.join(where)}" for word, where in sorted(by_verdict.items()))
            lines.append(f"- {claim} ({whose}): {found}.")
    pairs = " ".join(pair_supply(compared.groups, regimes))
    both = beats_both(compared)
    return [" ".join(lead), *([""] + lines if lines else []), *([""] + both if both else []),
            *(["", pairs] if pairs else [])]


def plan_state(done: set[str]) -> str:
    """How much of the plan the verdict stands on: runs done of those planned, each regime's main rows' seeds."""
    planned = {job.name for job in study_jobs()}
    state = "complete" if planned <= done else "not complete: each verdict may still change"
    parts = []
    for regime in REGIMES:
        main = [job for job in study_jobs() if job.main and job.regime == regime]
        seeds = [len({j.seed for j in main if (j.row, j.algo) == (job.row, job.algo) and j.name in done})
                 for job in main]
        spread = f"{min(seeds)}-{max(seeds)}" if min(seeds) < max(seeds) else f"{max(seeds)}"
        parts.append(f"regime {regime}: main rows at {spread} of {len(MAIN_SEEDS)} seeds"
                     if max(seeds) else f"regime {regime}: not started")
    return f"**Verdict from {len(planned & done)} of the {len(planned)} planned runs** ({state}; {'; '.join(parts)})."


def pairs_per_seed(runs: list[Run]) -> Stat | None:
    """The pairs trained on, mean ± std over seeds: each seed counted once (its mean over the runs), since every
    algorithm's row of a seed trains on the seed's one sample of pairs; counting those copies as runs of their own
    would shrink the spread below the main table's for the same rows."""
    by_seed: dict[int, list[int]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, []).append(run.pairs)
    return stat(sum(counts) / len(counts) for counts in by_seed.values())


def pair_supply(groups: dict, regimes: list[str]) -> list[str]:
    """The pairs each kind of method trained on, per regime: Long-PO samples on x_long, where right answers are rarer."""
    said = []
    for regime in regimes:
        runs = lambda row: [r for key, rs in groups.items() if key[0] == regime and key[2] == row  # noqa: E731
                            for r in rs if not r.failed and r.pairs is not None]
        long, short = pairs_per_seed(runs("long_po")), pairs_per_seed(runs("short_po"))
        if long and short:
            said.append(f"Pairs trained on, regime {regime}: Long-PO {cell(long, 0)} (sampled on x_long), the rows "
                        f"sampled on x_short {cell(short, 0)}.")
    return said


def resampled(runs: list[Run]) -> list[str]:
    """The runs that trained on another sample of their seed's short-context pairs than its Short-PO (a job that found
    the cache entry stale sampled again): still paired by seed and question, but not on the same training pairs.
    Per regime and seed: the runs of a claim's row named, the ablation cells counted, both samples' pair counts."""
    ok = [r for r in runs if not r.failed and r.pairs is not None and place(r)[2] != "long_po"]
    main = {(place(r)[0], r.seed): r for r in ok if place(r)[2] == "short_po"}
    said = []
    for (regime, seed), short in sorted(main.items()):
        other = [r for r in ok if (place(r)[0], r.seed) == (regime, seed) and pairs_sample(r) != pairs_sample(short)]
        named = [r.path.name for r in other if place(r) == main_key(*place(r)[:3])]
        cells = len(other) - len(named)
        if other:
            said.append(f"regime {regime}, seed {seed}: {', '.join(named + [f'{cells} ablation cells'] * (cells > 0))} "
                        f"on {'/'.join(map(str, sorted({r.pairs for r in other})))} pairs against Short-PO's {short.pairs}")
    return [] if not said else ["", "Trained on a second sample of their seed's pairs (a job found the cached sample "
                                "stale and sampled again; the comparisons stay paired by seed and question): "
                                + "; ".join(said) + "."]


def ra_forms(groups: dict) -> list[tuple[tuple, str, list[Run]]]:
    """Every SoLo-RA form on the chosen response that ran, as (its group key, its name, its runs): the main rows (the
    paper's form and SoLoPO-detach at the paper's alpha and abs) and each ablation cell (detach x distance x alpha)."""
    forms = []
    for key, runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        _, _, row, alpha, distance = key
        if row in ("solopo", "solopo_detach"):
            detach = "detach, " if row == "solopo_detach" else ""
            forms.append((key, f"SoLoPO ({detach}{distance}, alpha {alpha:g})", runs))
    return forms


def beats_both(compared: Compared) -> list[str]:
    """The sentence issue 26 asks for: the SoLo-RA forms that beat both Short-PO and Long-PO of their regime and
    algorithm, each verdict supported (both intervals above 0) on at least FIRM_SEEDS seeds; else that none does, and
    among how many forms compared so."""
    found, counted = [], 0
    for key, name, _ in ra_forms(compared.groups):
        regime, algo = key[:2]
        versus = [compared.between(key, main_key(regime, algo, row)) for row in ("short_po", "long_po")]
        if any(c is None or c.seeds < FIRM_SEEDS for c in versus):
            continue
        counted += 1
        if all(verdict(c) == "supported" for c in versus):
            found.append(f"{regime}/{algo} {name}: {intervals_text(versus[0])} over Short-PO, "
                         f"{intervals_text(versus[1])} over Long-PO ({min(c.seeds for c in versus)} seeds)")
    if not counted:
        return []
    if not found:
        return [f"No SoLo-RA form beats both Short-PO and Long-PO beyond the intervals ({counted} forms compared "
                f"on {FIRM_SEEDS} seeds or more)."]
    return [f"**Beating both Short-PO and Long-PO beyond the intervals** (a result the paper does not have; "
            f"{len(found)} of the {counted} forms compared on {FIRM_SEEDS} seeds or more): " + "; ".join(found) + "."]


def ablation_table(compared: Compared) -> list[str]:
    """Each SoLo-RA form (detach x distance x alpha) against Short-PO and Long-PO of its regime and algorithm, paired
    on the cases both were asked (an ablation cell's: its training length at every depth)."""
    rows = []
    for key, _, runs in ra_forms(compared.groups):
        regime, algo, row, alpha, distance = key
        if (distance, alpha) == ("abs", PAPER_ALPHA[algo]):
            continue
        versus = []
        for other in (main_key(regime, algo, baseline) for baseline in ("short_po", "long_po")):
            c = compared.between(key, other)  # "-" below where that row has not run
            versus += [describe(c), verdict_on(c)] if compared.groups.get(other) else ["-", "-"]
        rows.append([regime, algo, "yes" if row == "solopo_detach" else "no", distance, f"{alpha:g}",
                     str(len([r for r in runs if not r.failed])), spread_cell(scores_of(runs, "short")),
                     spread_cell(scores_of(runs, AVG)), *versus])
    head = ["regime", "algo", "detach_short", "distance", "alpha", "seeds", "evidence only [95%]",
            "avg long (its lengths) [95%]", "- Short-PO [95%]", "verdict (> Short-PO)", "- Long-PO [95%]",
            "verdict (> Long-PO)"]
    return markdown(head, rows) if rows else ["No ablation runs."]


def step_series(run: Run, key: str) -> dict[int, float]:
    """A per-step metric from the run's metrics.csv (CSV logger), {step: value}."""
    found = sorted(run.path.glob("**/metrics.csv"))
    if not found:
        return {}
    with open(found[0]) as f:
        return {int(r["step"]): float(r[f"train/{key}"]) for r in csv.DictReader(f) if r.get(f"train/{key}")}


def mechanism_panels(groups: dict, regime: str, algo: str) -> dict[str, dict]:
    """{panel title: {line name: {step: Stat over seeds}}}: per MECHANISM metric, the paper's form and detach_short,
    each over the seeds whose run ended and logged it, at the steps all of them logged; each line's name says its
    seeds, the error bars' n."""
    panels: dict[str, dict] = {}
    for metric, title in MECHANISM.items():
        for name, row in (("paper's form", "solopo"), ("detach_short", "solopo_detach")):
            runs = [r for r in groups.get(main_key(regime, algo, row), []) if not r.failed]
            series = [s for s in (step_series(r, metric) for r in runs) if s]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if steps:
                label = f"{name} ({len(series)} seed{'s' * (len(series) != 1)})"
                panels.setdefault(title, {})[label] = {n: stat(s[n] for s in series) for n in steps}
    return panels


def mechanism_plots(groups: dict, out: Path) -> list[Path]:
    """Per regime and algorithm, one panel each for the chosen response's short-context reward, its long-context
    reward and their signed gap per step, the paper's form against detach_short (mean ± std over seeds)."""
    drawn = []
    for regime, algo in sorted({(k[0], k[1]) for k in groups if k[2] == "solopo"}):
        if panels := mechanism_panels(groups, regime, algo):
            drawn.append(score_vs_step(panels, out / f"mechanism_{regime}_{algo}.png", from_zero=False,
                                       ylabel=f"regime {regime}, {algo}: chosen response's reward,\n"
                                              "mean ± std over seeds (error bars)"))
    return drawn


def length_plot(groups: dict, regimes: list[str], algos: list[str], out: Path) -> list[Path]:
    panels = {}
    for regime in regimes:
        for algo in algos:
            lines = {}
            for row in ("base", *MAIN_ROWS):
                runs = groups.get((regime, "-", "base", None, None) if row == "base" else main_key(regime, algo, row), [])
                lengths = list(dict.fromkeys(k for r in runs for k in r.scores if k != AVG))
                if series := {n: s for n in lengths if (s := scores_of(runs, n))}:
                    lines[row] = series
            if lines:
                panels[f"regime {regime}, {algo}"] = lines
    return [accuracy_vs_length(panels, out / "accuracy_vs_length.png", dashed=("base",),
                               ylabel="sub-EM (%), mean ± std over seeds")] if panels else []


def blocks(runs: list[Run]) -> dict[str, list[str]]:
    ran = [r for r in runs if r.seed != CURVE_SEED]
    runs = with_base_rows(runs)
    groups = group(runs, place)
    regimes = sorted({key[0] for key in groups})
    algos = sorted({key[1] for key in groups if key[1] != "-"})
    done = {r.path.name for r in ran if not r.failed}
    compared = Compared(groups)
    cells = claim_cells(compared, regimes, algos)
    return {"runs": [f"{len(ran)} runs, {sum(1 for r in ran if r.failed)} failed."],
            "verdict": verdict_paragraph(cells, compared, regimes, done),
            "main": main_table(groups, regimes, algos), "claims": claim_lines(cells) + resampled(ran),
            "ablations": ablation_table(compared), "cost": cost_table(groups, main_key)}


def questions_per_run(runs: list[Run]) -> str:
    """How many questions the runs' evaluations asked: "200", or the range where they differ."""
    counts = sorted({len(case_scores(r)) for r in runs if not r.failed} - {0})
    return "-" if not counts else f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def write_study(runs: list[Run], out: Path) -> Path:
    groups, parts = group(with_base_rows(runs), place), blocks(runs)
    regimes, algos = sorted({k[0] for k in groups}), sorted({k[1] for k in groups if k[1] != "-"})
    out.mkdir(parents=True, exist_ok=True)
    plots = length_plot(groups, regimes, algos, out) + mechanism_plots(groups, out)
    text = ["# The decisive study: results", "", parts["runs"][0], "", "## Verdict", "", *parts["verdict"], "",
            "## Main rows: sub-EM (%), mean ± std over seeds [the mean's 95% t interval], "
            f"{questions_per_run(runs)} questions a run", "", *parts["main"], "",
            "## Claims: paired differences over seeds and questions, 95% bootstrap intervals", "", *parts["claims"], "",
            "## Ablations against Short-PO and Long-PO", "", *parts["ablations"], "",
            "## Pipeline cost per stage and method", "", *parts["cost"], "",
            "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    (out / "study.md").write_text("\n".join(text))
    return out / "study.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reports.add_options(parser, out="<first dir>/report")
    args = parser.parse_args()
    reports.generate(args.readme, lambda: find_runs(args.dirs), blocks,
                     lambda runs: [write_study(runs, args.out or args.dirs[0] / "report")])


if __name__ == "__main__":
    main()
