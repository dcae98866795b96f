"""What the study's numbers say, as sentences generated from them: SoLoPO against each other method, the alpha
sweep, training time and memory against long-context PO, the paper's claims checked per algorithm, and the paper's
scores beside ours.

``groups`` is {(algorithm, row, alpha): [Run, ...]} (study.place, one run per seed); scores are the average
long-context sub-EM (%) of the trained model. The paper file is JSON: {"best_alpha": {algo: alpha}, "claims":
[{"claim", "better", "worse"}], "scores": [{"benchmark", "algo", "base", "long_po", "solopo"}], "runtime_minutes":
{"algo", "lengths", "long_po", "solopo"}, "model", "note"}; every key is optional.
"""
from __future__ import annotations

from experiments.paper_mini.study import BASE, RA_ROWS
from solopo.report.runs import Run, failures, on_shared_seeds, scores_of, stat
from solopo.report.tables import cell

AVG = "avg long"
# SoLoPO at its main alpha against each of these rows, by the name a sentence gives them
OTHERS = (("long_po", "Long-{}"), ("expand_long", "Expand-long-{}"), ("short_po", "Short-{}"),
          ("solopo_both", "SoLo-{} on both responses"), ("solopo_detach", "SoLo-{} without gradient to the short side"))


def main_alpha(groups: dict, algo: str, paper: dict) -> float | None:
    """The paper's best alpha for ``algo`` when it was run, else the alpha run with the most seeds."""
    alphas = {key[2]: len(runs) for key, runs in groups.items() if key[:2] == (algo, "solopo")}
    best = paper.get("best_alpha", {}).get(algo)
    return best if best in alphas else max(alphas, key=lambda a: (alphas[a], a == 1.0), default=None)


def score_cell(runs: list[Run], column: str = AVG) -> str:
    """mean ± std of the runs that ended, or why none did."""
    value = scores_of(runs, column)
    return cell(value) if value is not None else f"failed: {failures(runs)}" if failures(runs) else ""


def compare(name_a: str, runs_a: list[Run], name_b: str, runs_b: list[Run]) -> str:
    """One factual sentence: which is larger, by how much, and whether the gap is beyond the seed spread, over
    the seeds both sides have."""
    (runs_a, runs_b), shared = on_shared_seeds(runs_a, runs_b)
    a, b = scores_of(runs_a, AVG), scores_of(runs_b, AVG)
    if a is None or b is None:
        missing, runs = (name_a, runs_a) if a is None else (name_b, runs_b)
        return f"{name_a} vs {name_b}: no comparison, {missing} has no result ({failures(runs) or 'not run'})."
    diff = a.mean - b.mean
    text = f"{name_a} {a} vs {name_b} {b} avg long-context sub-EM: "
    text += "equal" if round(diff, 1) == 0 else f"{name_a if diff > 0 else name_b} higher by {abs(diff):.1f} points"
    if a.n > 1 and b.n > 1:
        text += ", beyond the seed spread" if abs(diff) > a.std + b.std else ", within the seed spread"
        text += f" (std {a.std:.1f} and {b.std:.1f})"
    else:
        text += f" (seed {', '.join(map(str, sorted(shared)))} only: no spread to compare with)" if shared else ""
    by_seed_b = {r.seed: r.scores.get(AVG) for r in runs_b if not r.failed}
    paired = [r.scores[AVG] - by_seed_b[r.seed] for r in runs_a if not r.failed and r.seed in by_seed_b]
    if len(paired) > 1:
        text += f"; per seed: {', '.join(f'{d:+.1f}' for d in paired)}"
    return text + "."


def comparisons(groups: dict, algos: list[str], paper: dict) -> list[str]:
    """Per algorithm: SoLoPO at its main alpha against every other row that ran, then the best alpha of the sweep."""
    lines = []
    for algo in algos:
        alpha = main_alpha(groups, algo, paper)
        if alpha is None:
            continue
        name = f"SoLo-{algo} (alpha {alpha:g})"
        for other, other_name in OTHERS:
            key = (algo, other, alpha if other in RA_ROWS else None)
            if key in groups:
                lines.append(f"- {algo}: " + compare(name, groups[(algo, "solopo", alpha)], other_name.format(algo),
                                                     groups[key]))
        lines += _alpha_sweep(groups, algo, paper)
    return lines


def _alpha_sweep(groups: dict, algo: str, paper: dict) -> list[str]:
    points = {key[2]: runs for key, runs in groups.items() if key[:2] == (algo, "solopo")}
    sides, shared = on_shared_seeds(*points.values())
    sweep = {a: s for a, s in zip(points, (scores_of(runs, AVG) for runs in sides)) if s is not None}
    if len(sweep) < 2:
        return []
    best = max(sweep, key=lambda a: sweep[a].mean)
    paper_best = paper.get("best_alpha", {}).get(algo)
    return [f"- {algo}: over alpha {', '.join(f'{a:g}' for a in sorted(sweep))} (seeds "
            f"{', '.join(map(str, sorted(shared)))}), the best avg long-context sub-EM is at alpha {best:g} "
            f"({sweep[best]})" + (f"; the paper's best for {algo} is {paper_best:g}." if paper_best is not None else ".")]


def claims(groups: dict, algos: list[str], paper: dict) -> list[str]:
    """Each claim of the paper file ({"claim", "better", "worse"}: two rows) checked per algorithm here."""
    lines = []
    for claim in paper.get("claims", []):
        verdicts = []
        for algo in algos:
            alpha = main_alpha(groups, algo, paper)
            pick = lambda row: groups.get((BASE, row, None) if row == "base" else  # noqa: E731
                                          (algo, row, alpha if row in RA_ROWS else None), [])
            (runs_better, runs_worse), _ = on_shared_seeds(pick(claim["better"]), pick(claim["worse"]))
            better, worse = scores_of(runs_better, AVG), scores_of(runs_worse, AVG)
            if better is None or worse is None:
                why = "; ".join(f"{row}: {failures(pick(row)) or 'not run'}" for row, v in
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
            fit = [stat(r.timings.get("fit_s") for r in x) for x in (solopo, runs)]
            mem = [stat(r.metrics.get("train/peak_mem_gib") for r in x) for x in (solopo, runs)]
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
