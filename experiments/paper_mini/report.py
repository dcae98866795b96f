"""The paper_mini study's report: the generic sweep report over seeds (report.md, report.csv, their plots) and
study.md: methods x algorithms (mean ± std over seeds, failed runs with their reason), comparisons generated from
the numbers, training time and memory, the paper's claims and numbers beside ours, and the study's plots.

    python experiments/paper_mini/report.py experiments/paper_mini/runs --paper experiments/paper_mini/paper.json \\
        --out experiments/paper_mini/results --readme experiments/paper_mini/README.md

--readme rewrites the page's `<!-- solopo.report:NAME -->` blocks (runs, main, pivot, comparisons) with the
generated tables. "Δ base" is each run's gain over its own evaluation before training.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.paper_mini.findings import (claims, comparisons, efficiency, main_alpha, paper_scores,  # noqa: E402
                                             score_cell)
from experiments.paper_mini.study import BASE, RA_ROWS, place  # noqa: E402
from experiments.studies import reports  # noqa: E402
from solopo.report.plots import accuracy_vs_length, score_vs_alpha  # noqa: E402
from solopo.report.runs import Run, failures, find_runs, group, scores_of, stat  # noqa: E402
from solopo.report.sweep import write_report  # noqa: E402
from solopo.report.tables import cell, markdown  # noqa: E402

# The committed runs were written before solopo took TRL's metric names: they are read under today's.
RENAMED = {"rewards/accuracy": "rewards/accuracies", "rewards/margin": "rewards/margins",
           "rewards/chosen_long": "ra/chosen_long"}
ORDER = ("base", "short_po", "long_po", "expand_long", "solopo", "solopo_both", "solopo_detach")  # table order
VERDICT = "Read the numbers above with the study's own verdict, written from them by hand (its README)."


def current_names(run: Run) -> Run:
    """The run with its metrics under today's names (train/rewards/margin -> train/rewards/margins, ...)."""
    metrics = {}
    for key, value in run.metrics.items():
        split, _, name = key.partition("/")
        metrics[f"{split}/{RENAMED.get(name, name)}"] = value
    return dataclasses.replace(run, metrics=metrics)


def study_groups(runs: list[Run]) -> dict[tuple, list[Run]]:
    """(algo, row, alpha) -> its runs over seeds: the base model first, then by algorithm, row, alpha."""
    groups = group(runs, place)

    def order(key: tuple) -> tuple:
        algo, row, alpha = key
        return algo != BASE, algo, ORDER.index(row) if row in ORDER else len(ORDER), alpha or 0

    return {key: groups[key] for key in sorted(groups, key=order)}


def pairs(run: Run) -> int | None:
    """Train pairs; a run that failed for want of pairs had none."""
    return 0 if run.pairs is None and run.failed == "no pairs" else run.pairs


def main_table(groups: dict, lengths: list[str]) -> list[str]:
    head = ["algo", "method", "alpha", "seeds", *lengths, "avg long", "Δ base", "pairs", "train s", "peak GiB"]
    rows = []
    for (algo, row, alpha), runs in groups.items():
        ok = [r for r in runs if not r.failed]
        seeds = f"{len(ok)}" + (f" (+{len(runs) - len(ok)} failed: {failures(runs)})" if len(ok) < len(runs) else "")
        cells = [cell(scores_of(runs, c)) for c in [*lengths, "avg long"]]
        if not ok:  # a row whose every run failed says why where its scores would be
            cells = [f"**failed: {failures(runs)}**"] + [""] * (len(cells) - 1)
        extra = [cell(stat(r.gain for r in ok)), cell(stat(pairs(r) for r in runs), 0),
                 cell(stat(r.timings.get("fit_s") for r in ok), 0),
                 cell(stat(r.metrics.get("train/peak_mem_gib") for r in ok), 2)]
        rows.append([algo, row, "-" if alpha is None else f"{alpha:g}", seeds, *cells, *extra])
    return markdown(head, rows)


def pivot(groups: dict, algos: list[str], paper: dict) -> list[str]:
    """avg long-context sub-EM: one row per method (SoLoPO at its main alpha), one column per algorithm."""
    rows = []
    for row in ORDER[1:]:
        cells = [score_cell(groups.get((algo, row, main_alpha(groups, algo, paper) if row in RA_ROWS else None), []))
                 for algo in algos]
        if any(cells):
            rows.append([row, *cells])
    return markdown(["method", *algos], rows)


def _view(runs: list[Run]) -> tuple[dict, list[str], list[str]]:
    """The runs' groups, the evaluated lengths and the algorithms, in the order met."""
    lengths = list(dict.fromkeys(k for r in runs for k in r.scores if k != "avg long"))
    return study_groups(runs), lengths, list(dict.fromkeys(place(r)[0] for r in runs if place(r)[0] != BASE))


def study_blocks(runs: list[Run], paper: dict) -> dict[str, list[str]]:
    """The generated pieces of the study, by the name a page's block asks for."""
    groups, lengths, algos = _view(runs)
    return {"runs": [f"{len(runs)} runs, {sum(1 for r in runs if r.failed)} failed."],
            "main": main_table(groups, lengths), "pivot": pivot(groups, algos, paper),
            "comparisons": comparisons(groups, algos, paper)}


def plots(groups: dict, lengths: list[str], algos: list[str], paper: dict, out: Path) -> list[Path]:
    """Accuracy vs length, a panel per algorithm (a line per row, SoLoPO at its main alpha, the base model dashed),
    and score vs alpha, a line per algorithm (alpha 0 is short_po: the same pairs and loss without SoLo-RA)."""
    base = next((runs for (_, row, _), runs in groups.items() if row == "base"), [])
    panels = {}
    for algo in algos:
        lines = {"base": {n: s.mean for n in lengths if (s := scores_of(base, n))}} if base else {}
        for (group_algo, row, alpha), runs in groups.items():
            if group_algo == algo and not (row.startswith("solopo") and alpha != main_alpha(groups, algo, paper)):
                series = {n: s for n in lengths if (s := scores_of(runs, n))}
                if series:  # a group whose runs all failed has no line
                    lines[row + (f" (alpha {alpha:g})" if alpha is not None else "")] = series
        panels[f"{algo}: accuracy vs context length"] = lines
    drawn = [accuracy_vs_length(panels, out / "study_accuracy_vs_length.png", dashed=("base",),
                                ylabel="sub-EM (%) after training (mean ± std over seeds)")] if panels and lengths else []
    by_alpha = {}
    for (algo, row, alpha), runs in groups.items():
        value = scores_of(runs, "avg long")
        if value is not None and row in ("solopo", "short_po"):
            by_alpha.setdefault(algo, {})[0.0 if row == "short_po" else alpha] = value
    by_alpha = {algo: points for algo, points in by_alpha.items() if len(points) > 1}
    if by_alpha:
        drawn.append(score_vs_alpha(by_alpha, out / "study_score_vs_alpha.png", tick_notes={0.0: "short_po"}))
    return drawn


def write_study(runs: list[Run], out: Path, paper: dict | None = None) -> Path:
    """study.md and the study's plots in ``out``."""
    paper = paper or {}
    groups, lengths, algos = _view(runs)
    blocks = study_blocks(runs, paper)
    sections = [
        "## Main table", "", f"Sub-EM (%) after training by context length, mean ± std over seeds; {blocks['runs'][0]}",
        "", *blocks["main"], "",
        "## Average long-context sub-EM (%), methods x algorithms", "", *blocks["pivot"], "",
        "## Comparisons (generated from the numbers)", "", *blocks["comparisons"], "",
        "## Training time and memory", "", "Runs shared one GPU with others, so times are indicative.", "",
        *efficiency(groups, algos, paper), "",
    ]
    if paper:
        sections += ["## The paper's claims, checked here", "", *claims(groups, algos, paper), "",
                     "## The paper's numbers beside ours", "", paper.get("note", ""), "", *paper_scores(groups, paper), ""]
    out.mkdir(parents=True, exist_ok=True)
    drawn = plots(groups, lengths, algos, paper, out)
    sections += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in drawn], "", "## Verdict", "", VERDICT, ""]
    (out / "study.md").write_text("\n".join(sections))
    return out / "study.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reports.add_options(parser, out="the first directory")
    parser.add_argument("--paper", type=Path, help="a JSON file of the paper's numbers and claims to compare with")
    args = parser.parse_args()
    out = args.out or args.dirs[0]

    def read() -> tuple[list[Run], dict]:
        return [current_names(run) for run in find_runs(args.dirs)], _read_paper(args.paper) if args.paper else {}

    def write(runs: list[Run], paper: dict) -> list[Path]:
        write_report(runs, out, seeds=True)
        return [out / "report.md", write_study(runs, out, paper)]

    reports.generate(args.readme, read, lambda inputs: study_blocks(*inputs), lambda inputs: write(*inputs))


def _read_paper(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None


if __name__ == "__main__":
    main()
