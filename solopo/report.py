"""Turn run directories (a multirun sweep, or several runs) into one comparison table and plots.

    python -m solopo.report multirun/2026-11-29/12-00-00
    python -m solopo.report outputs/a outputs/b --out report/
    python -m solopo.report runs/ --seeds                      # runs that differ only in seed: mean ± std
    python -m solopo.report runs/ --study --paper paper.json   # methods x algorithms (solopo.report_study)
    python -m solopo.report runs/ --study --readme README.md   # also rewrite README's generated blocks

Each row is one run: the config values that differ between the runs (algo, method, alpha,
lengths, ...) against its evaluation scores (sub-EM by context length, the long-context average,
before and after training), validation metrics and timings. Writes report.md, report.csv and PNG
plots (accuracy vs length per run; score vs alpha when alpha varies). A run directory holding
failed.json instead of results.json ({"reason", "detail", "config"}, as a job launcher writes it)
is a failed run: its row says why, so a missing result is never silent.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from solopo.eval.plots import plt, save_figure
from solopo.report_seeds import aggregate, csv_cells

IGNORED = ("logger.", "hydra.")  # paths and logging details differ between runs without being a factor


def find_results(paths: list[Path]) -> list[Path]:
    """results.json of each run (failed.json where a run failed), in the directories given or one level down."""
    found = []
    for path in paths:
        runs = [path] if _outcome(path) else sorted(p for p in path.iterdir() if p.is_dir() and _outcome(p))
        found += [_outcome(run) for run in runs]
    if not found:
        raise SystemExit(f"no results.json or failed.json under {', '.join(map(str, paths))}")
    return found


def _outcome(run_dir: Path) -> Path | None:
    for name in ("results.json", "failed.json"):
        if (run_dir / name).exists():
            return run_dir / name
    return None


def load_result(path: Path) -> dict:
    """A run's results, or for a failed run {"config": ..., "failed": {"reason", "detail", ...}}."""
    data = json.loads(path.read_text())
    return data if path.name == "results.json" else {"config": data.get("config", {}), "failed": data}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(value) if isinstance(value, list) else value}


def rows_of(results: list[dict]) -> tuple[list[str], list[dict]]:
    """The varying config keys, and one row per run: those keys, then scores and timings."""
    configs = [flatten(r.get("config", {})) for r in results]
    keys = sorted({k for c in configs for k in c if not k.startswith(IGNORED)})
    varying = [k for k in keys if _varies(configs, k)]
    rows = []
    any_failed = any("failed" in r for r in results)
    for config, result in zip(configs, results):
        row = {k: config.get(k) for k in varying}
        if any_failed:
            row["status"] = f"failed: {result['failed'].get('reason', '?')}" if "failed" in result else "ok"
        for name, table in result.get("eval", {}).items():
            for length, score in table["by_length"].items():
                row[f"{name} sub-EM@{length}"] = round(100 * score, 1)
            row[f"{name} avg long"] = round(100 * table["average_long"], 1)
        metrics = result.get("metrics", {})
        for key in ("val/loss", "val/rewards/accuracy", "val/ra/gap", "train/peak_mem_gib"):
            if key in metrics:
                row[key] = round(metrics[key], 4)
        for key in ("fit_s", "total_s"):
            if key in result.get("timings", {}):
                row[key] = round(result["timings"][key], 1)
        rows.append(row)
    return varying, rows


def _varies(configs: list[dict], key: str) -> bool:
    """Whether ``key`` is a factor of the comparison. A hyperparameter of a swapped component (algo.gamma
    when algo._target_ differs) is one only if it also differs between runs of the same component."""
    group = key.rsplit(".", 1)[0] + "._target_" if "." in key else None
    by_target: dict[str, set[str]] = {}
    for c in configs:
        target = str(c.get(group)) if group and group != key else ""
        by_target.setdefault(target, set()).add(json.dumps(c.get(key), sort_keys=True, default=str))
    if len(by_target) > 1:
        return any(len(values) > 1 for values in by_target.values())
    return len(next(iter(by_target.values()))) > 1


def label(row: dict, varying: list[str]) -> str:
    """e.g. "algo=SimPO, alpha=1.0": a group's name for its _target_, else the key's last part."""
    name = lambda k: k.split(".")[0] if k.endswith("._target_") else k.split(".")[-1]  # noqa: E731
    return ", ".join(f"{name(k)}={_short(row[k])}" for k in varying) or "run"


def _short(value: Any) -> str:
    text = str(value)
    return text.rsplit(".", 1)[-1] if text.startswith("solopo.") else text


def write_report(results_paths: list[Path], out: Path, seeds: bool = False) -> dict:
    """report.md and report.csv, one row per run or, with ``seeds``, per group of runs that differ only in
    their seed (mean ± std over the seeds, and a `seeds` count), and the plots (one line per run)."""
    results = [load_result(p) for p in results_paths]
    varying, rows = rows_of(results)
    names = [p.parent.name for p in results_paths]
    table_keys, table_rows = aggregate(rows, varying) if seeds else (varying, rows)
    if seeds:
        names = [label(row, table_keys) for row in table_rows]
    columns = list(dict.fromkeys(k for row in table_rows for k in row))
    out.mkdir(parents=True, exist_ok=True)
    cells = [csv_cells(row) for row in table_rows]
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", *dict.fromkeys(k for row in cells for k in row)])
        writer.writeheader()
        for name, row in zip(names if seeds else [str(p.parent) for p in results_paths], cells):
            writer.writerow({"run": name, **row})
    title = f"# Report: {len(rows)} runs" + (f" in {len(table_rows)} groups (mean ± std over seeds)" if seeds else "")
    lines = [title, "", "| " + " | ".join(["run", *columns]) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in zip(names, table_rows):
        lines.append("| " + " | ".join([name, *(_short(row.get(c, "")) for c in columns)]) + " |")
    plots = _plots(results, rows, varying, out)
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"rows": table_rows, "varying": table_keys, "plots": plots}


def _plots(results: list[dict], rows: list[dict], varying: list[str], out: Path) -> list[Path]:
    plots = []
    trained = [(label(row, varying), r["eval"]["trained"]) for row, r in zip(rows, results) if "trained" in r.get("eval", {})]
    if trained:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, table in trained:
            lengths = list(table["by_length"])
            ax.plot(range(len(lengths)), [100 * table["by_length"][n] for n in lengths], marker="o", label=name)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set(xlabel="context length (tokens; short = the evidence alone)", ylabel="sub-EM (%) after training",
               ylim=(0, 100), title="Accuracy vs context length, per run")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        plots.append(save_figure(fig, out / "report_accuracy_vs_length.png"))
    if "ra.alpha" in varying and trained:
        others = [k for k in varying if k != "ra.alpha"]
        fig, ax = plt.subplots(figsize=(6, 4))
        groups: dict[str, list[tuple[float, float]]] = {}
        for row, r in zip(rows, results):
            if "trained" in r.get("eval", {}):
                groups.setdefault(label(row, others), []).append((row["ra.alpha"], 100 * r["eval"]["trained"]["average_long"]))
        for name, points in groups.items():
            points.sort()
            ax.plot([a for a, _ in points], [s for _, s in points], marker="o", label=name)
        ax.set(xlabel="SoLo-RA alpha", ylabel="long-context sub-EM (%)", ylim=(0, 100), title="Score vs alpha")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        plots.append(save_figure(fig, out / "report_score_vs_alpha.png"))
    return plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="a multirun directory or run directories")
    parser.add_argument("--out", type=Path, help="where the report goes (default: the first directory)")
    parser.add_argument("--seeds", action="store_true", help="one row per config: mean ± std over its seeds")
    parser.add_argument("--study", action="store_true", help="also study.md: methods x algorithms, comparisons")
    parser.add_argument("--paper", type=Path, help="with --study: a JSON file of the paper's numbers to compare with")
    parser.add_argument("--readme", type=Path, help="with --study: a page whose <!-- solopo.report:NAME --> blocks "
                        "(runs, main, pivot, comparisons) are rewritten with the generated tables")
    args = parser.parse_args()
    if args.readme and not args.study:
        parser.error("--readme needs --study")
    out = args.out or args.dirs[0]
    paths = find_results(args.dirs)
    report = write_report(paths, out, seeds=args.seeds)
    if args.study:
        from solopo.report_study import fill_blocks, study_blocks, write_study

        results, paper = [load_result(p) for p in paths], json.loads(args.paper.read_text()) if args.paper else {}
        print(write_study(results, out, paper))
        if args.readme:
            try:
                text = fill_blocks(args.readme.read_text(), study_blocks(results, paper), str(args.readme))
            except ValueError as err:
                raise SystemExit(str(err)) from None
            args.readme.write_text(text)
            print(args.readme)
    print(out / "report.md")
    print(f"{len(report['rows'])} runs; varying: {', '.join(report['varying']) or 'nothing'}")


if __name__ == "__main__":
    main()
