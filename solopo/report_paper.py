"""A paper's numbers and claims beside a study's (solopo.report_study): each claim checked per algorithm, the
paper's scores next to ours, and training time and memory against long-context PO.

The paper file is JSON: {"best_alpha": {algo: alpha}, "claims": [{"claim", "better", "worse"}],
"scores": [{"benchmark", "algo", "base", "long_po", "solopo"}], "runtime_minutes": {"algo", "lengths",
"long_po", "solopo"}, "model", "note"}; every key is optional.
"""
from __future__ import annotations

from solopo.report_runs import BASE, RA_METHODS, failures, main_alpha, on_shared_seeds, score_cell, scores_of
from solopo.report_seeds import stat


def claims(groups: dict, algos: list[str], paper: dict) -> list[str]:
    """Each claim of the paper file ({"claim", "better", "worse"}: two methods) checked per algorithm here."""
    lines = []
    for claim in paper.get("claims", []):
        verdicts = []
        for algo in algos:
            alpha = main_alpha(groups, algo, paper)
            pick = lambda m: groups.get((BASE, m, None) if m == "base" else  # noqa: E731
                                        (algo, m, alpha if m in RA_METHODS else None), [])
            (runs_better, runs_worse), _ = on_shared_seeds(pick(claim["better"]), pick(claim["worse"]))
            better, worse = scores_of(runs_better, "avg long"), scores_of(runs_worse, "avg long")
            if better is None or worse is None:
                why = "; ".join(f"{m}: {failures(pick(m)) or 'not run'}" for m, v in
                                ((claim["better"], better), (claim["worse"], worse)) if v is None)
                verdicts.append(f"{algo}: no result ({why})")
            else:
                diff = better.mean - worse.mean
                verdict = "no difference" if round(diff, 1) == 0 else "holds" if diff > 0 else "does not hold"
                verdicts.append(f"{algo}: {verdict} ({diff:+.1f} points)")
        lines.append(f"- {claim['claim']} ({claim['better']} > {claim['worse']}): " + "; ".join(verdicts) + ".")
    return lines


def efficiency(groups: dict, algos: list[str], paper: dict) -> list[str]:
    """SoLoPO's training time and peak memory against long-context PO, per algorithm, over the seeds both have.
    Expand-long runs the same step as Long-PO (two long sequences per pair), so it stands in where Long-PO has no
    result."""
    lines = []
    for algo in algos:
        solopo_all = [r for r in groups.get((algo, "solopo", main_alpha(groups, algo, paper)), []) if not r.failed]
        for other in ("long_po", "expand_long"):
            (solopo, runs), _ = on_shared_seeds(solopo_all, [r for r in groups.get((algo, other, None), []) if not r.failed])
            fit = [stat(r.fit_s for r in x) for x in (solopo, runs)]
            mem = [stat(r.peak_gib for r in x) for x in (solopo, runs)]
            if None not in fit and None not in mem:
                lines.append(f"- {algo}: SoLoPO trains in {fit[0].mean:.0f} s vs {fit[1].mean:.0f} s for {other} "
                             f"({fit[0].mean / fit[1].mean:.2f}x), peak memory {mem[0].mean:.2f} vs {mem[1].mean:.2f} GiB "
                             f"({mem[0].mean / mem[1].mean:.2f}x).")
                break
    runtime = paper.get("runtime_minutes")
    if runtime:
        points = zip(runtime["lengths"], runtime["long_po"], runtime["solopo"])
        ratios = ", ".join(f"{solopo / long_po:.2f}x at {n}" for n, long_po, solopo in points)
        lines.append(f"- The paper, {runtime['algo']}: SoLoPO / Long-PO training time {ratios} tokens.")
    return lines


def paper_scores(groups: dict, paper: dict) -> list[str]:
    """The paper's rows (benchmark, algo, base, long_po, solopo) beside ours (avg long-context sub-EM)."""
    rows = paper.get("scores", [])
    if not rows:
        return []
    lines = [f"| benchmark (paper: {paper.get('model', '?')}) | algo | paper: base | Long-PO | SoLoPO "
             f"| here: base | long_po | solopo |", "|---" * 8 + "|"]
    for row in rows:
        algo, alpha = row["algo"], main_alpha(groups, row["algo"], paper)
        ours = [groups.get(key, []) for key in ((BASE, "base", None), (algo, "long_po", None), (algo, "solopo", alpha))]
        lines.append(f"| {row['benchmark']} | {algo} | {row['base']} | {row['long_po']} | {row['solopo']} | "
                     + " | ".join(score_cell(runs) for runs in ours) + " |")
    return lines
