"""The sweep report: report.md and report.csv (solopo.report.tables) with its plots, accuracy vs context length
after training (a line per row) and, when alpha varies, the long-context score vs alpha (a line per setting of the
other factors)."""
from __future__ import annotations

from pathlib import Path

from solopo.report.plots import accuracy_vs_length, by_length, score_vs_alpha
from solopo.report.runs import Run, Stat, stat
from solopo.report.tables import label, seed_groups, write_tables
from solopo.settings.keys import flatten
from solopo.scoring import points

ALPHA = "ra.alpha"


def write_report(runs: list[Run], out: Path, seeds: bool = False) -> dict:
    """report.md, report.csv and the plots in ``out``: one row per run or, with ``seeds``, per group of runs that
    differ only in their seed (mean ± std over the seeds, and a `seeds` count). Returns {"keys", "rows", "plots"}."""
    written = write_tables(runs, out, seeds)
    plots = _plots(runs, written["keys"], out, seeds)
    lines = [*written["lines"], "", *[f"![{p.stem}]({p.name})" for p in plots]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"keys": written["keys"], "rows": written["rows"], "plots": plots}


def _plots(runs: list[Run], keys: list[str], out: Path, seeds: bool) -> list[Path]:
    """The plots over the runs that were trained (or their groups over seeds), each named by the varying keys."""
    trained = [r for r in runs if "trained" in r.eval]
    members_of = seed_groups(trained, keys).values() if seeds else [[r] for r in trained]
    groups = [(label(_setting(members[0], keys), keys), members) for members in members_of]
    if not groups:
        return []
    lines = {name: _mean_by_length(members) for name, members in groups}
    plots = [accuracy_vs_length({"Accuracy vs context length": lines}, out / "report_accuracy_vs_length.png",
                                ylabel="sub-EM (%) after training")]
    if ALPHA in keys:
        others = [k for k in keys if k != ALPHA]
        by_alpha: dict[str, dict[float, Stat | None]] = {}
        for _, members in groups:
            setting = _setting(members[0], keys)
            by_alpha.setdefault(label(setting, others), {})[float(setting[ALPHA])] = stat(
                points(r.eval["trained"]["average_long"]) for r in members)
        plots.append(score_vs_alpha(by_alpha, out / "report_score_vs_alpha.png"))
    return plots


def _setting(run: Run, keys: list[str]) -> dict:
    config = flatten(run.config)
    return {k: config.get(k) for k in keys}


def _mean_by_length(runs: list[Run]) -> dict[str, Stat | None]:
    columns = by_length(runs[0].eval["trained"])
    return {n: stat(by_length(r.eval["trained"]).get(n) for r in runs) for n in columns}
