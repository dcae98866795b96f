"""The study view of a set of runs: methods x algorithms, mean ± std over seeds, failed runs with their
reason, factual comparisons between methods, and the paper's numbers beside ours.

    python -m solopo.report /tmp/paper_mini --study --paper experiments/paper_mini/paper.json

Runs are placed and grouped by solopo.report_runs; "Δ base" is each run's gain over its own evaluation before
training. Writes study.md and the plots study_accuracy_vs_length.png and study_score_vs_alpha.png.
"""
from __future__ import annotations

import re
from pathlib import Path

from solopo.report_paper import claims, efficiency, paper_scores
from solopo.report_plots import accuracy_vs_length, score_vs_alpha
from solopo.report_runs import (BASE, METHODS, RA_METHODS, Run, cell, failures, group, main_alpha, on_shared_seeds,
                                score_cell, scores_of, to_run)
from solopo.report_seeds import stat

VERDICT = "Read the numbers above with the study's own verdict, written from them by hand (its README)."


def main_table(groups: dict, lengths: list[str]) -> list[str]:
    head = ["algo", "method", "alpha", "seeds", *lengths, "avg long", "Δ base", "pairs", "train s", "peak GiB"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (algo, method, alpha), runs in groups.items():
        ok = [r for r in runs if not r.failed]
        seeds = f"{len(ok)}" + (f" (+{len(runs) - len(ok)} failed: {failures(runs)})" if len(ok) < len(runs) else "")
        cells = [cell(scores_of(runs, c)) for c in [*lengths, "avg long"]]
        if not ok:  # a row whose every run failed says why where its scores would be
            cells = [f"**failed: {failures(runs)}**"] + [""] * (len(cells) - 1)
        extra = [cell(stat(r.gain for r in ok)), cell(stat(r.pairs for r in runs), 0), cell(stat(r.fit_s for r in ok), 0),
                 cell(stat(r.peak_gib for r in ok), 2)]
        lines.append("| " + " | ".join([algo, method, "-" if alpha is None else f"{alpha:g}", seeds, *cells, *extra]) + " |")
    return lines


def pivot(groups: dict, algos: list[str], paper: dict) -> list[str]:
    """avg long-context sub-EM: one row per method (SoLoPO at its main alpha), one column per algorithm."""
    lines = ["| method | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
    for method in METHODS[1:]:
        cells = []
        for algo in algos:
            alpha = main_alpha(groups, algo, paper) if method in RA_METHODS else None
            cells.append(score_cell(groups.get((algo, method, alpha), [])))
        if any(cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def compare(name_a: str, runs_a: list[Run], name_b: str, runs_b: list[Run]) -> str:
    """One factual sentence: which is larger, by how much, and whether the gap is beyond the seed spread, over
    the seeds both sides have."""
    (runs_a, runs_b), shared = on_shared_seeds(runs_a, runs_b)
    a, b = scores_of(runs_a, "avg long"), scores_of(runs_b, "avg long")
    if a is None or b is None:
        missing, runs = (name_a, runs_a) if a is None else (name_b, runs_b)
        why = failures(runs) or "not run"
        return f"{name_a} vs {name_b}: no comparison, {missing} has no result ({why})."
    diff = a.mean - b.mean
    text = f"{name_a} {a} vs {name_b} {b} avg long-context sub-EM: "
    text += "equal" if round(diff, 1) == 0 else f"{name_a if diff > 0 else name_b} higher by {abs(diff):.1f} points"
    if a.n > 1 and b.n > 1:
        text += ", beyond the seed spread" if abs(diff) > a.std + b.std else ", within the seed spread"
        text += f" (std {a.std:.1f} and {b.std:.1f})"
    else:
        text += f" (seed {', '.join(map(str, sorted(shared)))} only: no spread to compare with)" if shared else ""
    by_seed_b = {r.seed: r.scores.get("avg long") for r in runs_b if not r.failed}
    paired = [r.scores["avg long"] - by_seed_b[r.seed] for r in runs_a if not r.failed and r.seed in by_seed_b]
    if len(paired) > 1:
        text += f"; per seed: {', '.join(f'{d:+.1f}' for d in paired)}"
    return text + "."


def comparisons(groups: dict, algos: list[str], paper: dict) -> list[str]:
    lines = []
    for algo in algos:
        alpha = main_alpha(groups, algo, paper)
        if alpha is None:
            continue
        solopo = groups[(algo, "solopo", alpha)]
        name = f"SoLo-{algo} (alpha {alpha:g})"
        for other, label in (("long_po", f"Long-{algo}"), ("expand_long", f"Expand-long-{algo}"),
                             ("short_po", f"Short-{algo}"), ("solopo_both", f"SoLo-{algo} on both responses"),
                             ("solopo_detach", f"SoLo-{algo} without gradient to the short side")):
            key = (algo, other, alpha if other in RA_METHODS else None)
            if key in groups:
                lines.append(f"- {algo}: " + compare(name, solopo, label, groups[key]))
        points = {key[2]: runs for key, runs in groups.items() if key[:2] == (algo, "solopo")}
        sides, shared = on_shared_seeds(*points.values())
        sweep = {a: s for a, s in zip(points, (scores_of(runs, "avg long") for runs in sides)) if s is not None}
        if len(sweep) > 1:
            best = max(sweep, key=lambda a: sweep[a].mean)
            paper_best = paper.get("best_alpha", {}).get(algo)
            lines.append(f"- {algo}: over alpha {', '.join(f'{a:g}' for a in sorted(sweep))} (seeds "
                         f"{', '.join(map(str, sorted(shared)))}), the best avg long-context sub-EM is at alpha {best:g} "
                         f"({sweep[best]})"
                         + (f"; the paper's best for {algo} is {paper_best:g}." if paper_best is not None else "."))
    return lines


BLOCK = re.compile(r"(<!-- solopo\.report:(\w+) -->\n)(.*?)(<!-- /solopo\.report:\2 -->)", re.S)


def fill_blocks(text: str, blocks: dict[str, list[str]], where: str = "the document") -> str:
    """Replace the body of every `<!-- solopo.report:NAME -->` ... `<!-- /solopo.report:NAME -->` block with the
    generated lines of NAME, so that a hand-written page (a study's README) quotes tables that are regenerated, not
    typed. An unknown NAME, or a page without any block, is an error naming the page."""
    found = [m.group(2) for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(blocks))
    if not found or unknown:
        raise ValueError(f"{where}: " + (f"unknown generated block(s) {', '.join(unknown)}; known: " if unknown else
                         "no <!-- solopo.report:NAME --> ... <!-- /solopo.report:NAME --> block; NAME one of ")
                         + ", ".join(sorted(blocks)))
    return BLOCK.sub(lambda m: m.group(1) + "".join(line + "\n" for line in blocks[m.group(2)]) + m.group(4), text)


def _view(results: list[dict]) -> tuple[list[Run], dict, list[str], list[str]]:
    """The runs, their groups over seeds, the evaluated lengths and the algorithms, in the order met."""
    runs = [to_run(r) for r in results]
    lengths = list(dict.fromkeys(k for r in runs for k in r.scores if k != "avg long"))
    return runs, group(runs), lengths, list(dict.fromkeys(r.algo for r in runs if r.algo != BASE))


def study_blocks(results: list[dict], paper: dict | None = None) -> dict[str, list[str]]:
    """The generated pieces of the study, by the name a page's block asks for."""
    paper = paper or {}
    runs, groups, lengths, algos = _view(results)
    failed = [r for r in runs if r.failed]
    return {"runs": [f"{len(runs)} runs, {len(failed)} failed."], "main": main_table(groups, lengths),
            "pivot": pivot(groups, algos, paper), "comparisons": comparisons(groups, algos, paper)}


def write_study(results: list[dict], out: Path, paper: dict | None = None) -> Path:
    paper = paper or {}
    _, groups, lengths, algos = _view(results)
    blocks = study_blocks(results, paper)
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
    plots = [accuracy_vs_length(groups, lengths, algos, lambda a: main_alpha(groups, a, paper),
                                out / "study_accuracy_vs_length.png"),
             score_vs_alpha(groups, algos, out / "study_score_vs_alpha.png")]
    sections += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots if p], "", "## Verdict", "", VERDICT, ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study.md"
    path.write_text("\n".join(sections))
    return path
