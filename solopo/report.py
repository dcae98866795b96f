"""Turn run directories (a multirun sweep, or several runs) into one comparison table and plots.

    python -m solopo.report multirun/2026-11-29/12-00-00
    python -m solopo.report outputs/a outputs/b --out report/

Each row is one run: the config values that differ between the runs (algo, method, alpha,
lengths, ...) against its evaluation scores (sub-EM by context length, the long-context average,
before and after training), validation metrics and timings. Writes report.md, report.csv and PNG
plots (accuracy vs length per run; score vs alpha when alpha varies).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from solopo.eval.plots import plt, save_figure

IGNORED = ("logger.", "hydra.")  # paths and logging details differ between runs without being a factor


def find_results(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        found += [path / "results.json"] if (path / "results.json").exists() else sorted(path.glob("*/results.json"))
    if not found:
        raise SystemExit(f"no results.json under {', '.join(map(str, paths))}")
    return found


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
    for config, result in zip(configs, results):
        row = {k: config.get(k) for k in varying}
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


def write_report(results_paths: list[Path], out: Path) -> dict:
    results = [json.loads(p.read_text()) for p in results_paths]
    varying, rows = rows_of(results)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", *columns])
        writer.writeheader()
        for path, row in zip(results_paths, rows):
            writer.writerow({"run": str(path.parent), **row})
    lines = [f"# Report: {len(rows)} runs", "", "| " + " | ".join(["run", *columns]) + " |", "|---" * (len(columns) + 1) + "|"]
    for path, row in zip(results_paths, rows):
        lines.append("| " + " | ".join([path.parent.name, *(_short(row.get(c, "")) for c in columns)]) + " |")
    plots = _plots(results, rows, varying, out)
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"rows": rows, "varying": varying, "plots": plots}


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
    args = parser.parse_args()
    report = write_report(find_results(args.dirs), args.out or args.dirs[0])
    print((args.out or args.dirs[0]) / "report.md")
    print(f"{len(report['rows'])} runs; varying: {', '.join(report['varying']) or 'nothing'}")


if __name__ == "__main__":
    main()
