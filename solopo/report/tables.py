"""The sweep table: one row per run, or per group of runs over seeds, in markdown and CSV; and the filler that
rewrites a page's generated blocks with tables made from the runs.

A row holds the config values that differ between the runs (algo, method, alpha, lengths, ...), the evaluation
scores (sub-EM % by context length and the long-context average, before and after training), validation metrics
and timings. With seeds, the seed keys are no factor and every number becomes a Stat over the group.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from solopo.report.runs import Run, Stat, group, is_seed_key, stat
from solopo.settings.keys import flatten
from solopo.scoring import points
from solopo.training.results import RESUMABLE

IGNORED = ("logger.", "hydra.")  # paths and logging details differ between runs without being a factor
METRICS = ("val/loss", "val/rewards/accuracies", "val/ra/gap", "train/peak_mem_gib")


def varying_keys(runs: list[Run]) -> list[str]:
    """The config keys that are factors of the comparison, sorted."""
    configs = [flatten(r.config) for r in runs]
    keys = sorted({k for c in configs for k in c if not k.startswith(IGNORED)})
    return [k for k in keys if _varies(configs, k)]


def _varies(configs: list[dict], key: str) -> bool:
    """Whether ``key`` is a factor of the comparison. A hyperparameter of a swapped component (algo.gamma
    when algo._target_ differs) is one only if it also differs between runs of the same component."""
    group_key = key.rsplit(".", 1)[0] + "._target_" if "." in key else None
    by_target: dict[str, set[str]] = {}
    for c in configs:
        target = str(c.get(group_key)) if group_key and group_key != key else ""
        by_target.setdefault(target, set()).add(json.dumps(c.get(key), sort_keys=True, default=str))
    if len(by_target) > 1:
        return any(len(values) > 1 for values in by_target.values())
    return len(next(iter(by_target.values()))) > 1


def row_of(run: Run, keys: list[str], with_status: bool) -> dict:
    """One run's row: ``keys`` of its config, `status` where some run of the table failed, then its numbers."""
    config = flatten(run.config)
    row = {k: config.get(k) for k in keys}
    if with_status:
        row["status"] = status_of(run)
    for name, table in run.eval.items():
        for length, score in table["by_length"].items():
            row[f"{name} sub-EM@{length}"] = round(points(score), 1)
            row.update(_interval(f"{name} sub-EM@{length}", table.get("ci95_by_length", {}).get(length),
                                 table.get("n_by_length", {}).get(length)))
        row[f"{name} avg long"] = round(points(table["average_long"]), 1)
        row.update(_interval(f"{name} avg long", table.get("ci95_long"), table.get("n_long")))
    for name, table in run.benchmark.items():  # points already, per subset and their average, as papers give them
        for subset, cell in table["subsets"].items():
            row[f"{name} {subset}"] = round(cell["score"], 1)
            row.update(_interval(f"{name} {subset}", cell.get("ci95"), cell["n"], in_points=True))
        average = f"{name} {table['benchmark']} average"
        row[average] = round(table["average"], 1)
        row.update(_interval(average, table.get("ci95_average"), sum(cell["n"] for cell in table["subsets"].values()),
                             in_points=True))
    row.update({k: round(run.metrics[k], 4) for k in METRICS if k in run.metrics})
    row.update({k: round(run.timings[k], 1) for k in ("fit_s", "total_s") if k in run.timings})
    return row


def status_of(run: Run) -> str:
    """"ok"; "stopped: <reason>" for a run stopped with its state saved, which ckpt_path=last resumes (interrupted,
    preempted); "failed: <reason>" otherwise."""
    if not run.failed:
        return "ok"
    return f"{'stopped' if run.failed in RESUMABLE else 'failed'}: {run.failed}"


def _interval(column: str, ci95, n, in_points: bool = False) -> dict:
    """The 95% interval (%) and the number of cases of a score column, from shares (a held-out table's) or points (a
    benchmark's, ``in_points``); nothing for results.json files written before tables carried them."""
    if ci95 is None or n is None:
        return {}
    low, high = ci95 if in_points else (points(bound) for bound in ci95)
    return {f"{column} 95% CI": f"{low:.0f}-{high:.0f}", f"{column} n": n}


def seed_groups(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    """Runs equal in the non-seed ``keys``, grouped; 1 and 1.0 are one setting (ra.alpha=1 on the command line,
    1.0 in a config file)."""
    number = lambda v: float(v) if isinstance(v, int) and not isinstance(v, bool) else v  # noqa: E731
    setting = lambda run: tuple(json.dumps(number(flatten(run.config).get(k)), sort_keys=True, default=str)  # noqa: E731
                                for k in keys if not is_seed_key(k))
    return group(runs, setting)


def merge(rows: list[dict], keys: list[str]) -> dict:
    """One row for a group: the keys, `seeds` (the runs in it), each other numeric column as a Stat, and
    `status` when some runs failed or were stopped ("1 of 3 failed: no pairs; 1 of 3 stopped: preempted")."""
    merged = {k: rows[0].get(k) for k in keys}
    merged["seeds"] = len(rows)
    columns = dict.fromkeys(c for r in rows for c in r if c not in keys and c != "status" and not is_seed_key(c))
    for column in columns:
        value = stat(r.get(column) for r in rows)
        if value is not None:
            merged[column] = value
    ended: dict[str, list[str]] = {}  # "failed" / "stopped" -> the reasons of the group's runs that did not end
    for row in rows:
        if row.get("status", "ok") != "ok":
            kind, _, reason = row["status"].partition(": ")
            ended.setdefault(kind, []).append(reason)
    if ended:
        merged["status"] = "; ".join(f"{len(reasons)} of {len(rows)} {kind}: {', '.join(sorted(set(reasons)))}"
                                     for kind, reasons in sorted(ended.items()))
    return merged


def label(row: dict, keys: list[str]) -> str:
    """e.g. "algo=SimPO, alpha=1.0": a group's name for its _target_, else the key's last part."""
    name = lambda k: k.split(".")[0] if k.endswith("._target_") else k.split(".")[-1]  # noqa: E731
    return ", ".join(f"{name(k)}={short(row[k])}" for k in keys) or "run"


def counted(n: int, noun: str) -> str:
    """``n`` and its noun, in the singular for one: "1 run", "3 runs" (report text)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def short(value: Any) -> str:
    """A cell's text; a class path of solopo's own reads as its last part (solopo.core.algos.DPO -> DPO)."""
    text = str(value)
    return text.rsplit(".", 1)[-1] if text.startswith("solopo.") else text


def cell(value: Stat | None, digits: int = 1) -> str:
    return "" if value is None else value.format(digits)


def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(head) + " |", "|---" * len(head) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def table(runs: list[Run], seeds: bool) -> tuple[list[str], list[str], list[dict]]:
    """(the keys that name a row, the row names, the rows): one row per run, or with ``seeds`` per group of runs
    that differ only in their seed (named by their keys)."""
    keys = varying_keys(runs)
    with_status = any(r.failed for r in runs)
    if not seeds:
        return keys, [str(r.path.name) for r in runs], [row_of(r, keys, with_status) for r in runs]
    keys = [k for k in keys if not is_seed_key(k)]
    rows = [merge([row_of(r, keys, with_status) for r in members], keys) for members in seed_groups(runs, keys).values()]
    return keys, [label(row, keys) for row in rows], rows


def write_tables(runs: list[Run], out: Path, seeds: bool = False) -> dict:
    """report.md (its table; the caller appends the plots) and report.csv, where a Stat is two columns: the mean,
    and the std in `<column> std`. Returns {"keys", "rows", "lines"}."""
    keys, names, rows = table(runs, seeds)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [_csv_cells(row) for row in rows]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", *dict.fromkeys(k for row in cells for k in row)])
        writer.writeheader()
        csv_names = names if seeds else [str(r.path) for r in runs]
        writer.writerows({"run": name, **row} for name, row in zip(csv_names, cells))
    title = f"# Report: {counted(len(runs), 'run')}" + (f" in {counted(len(rows), 'group')} (mean ± std over seeds)"
                                                        if seeds else "")
    body = markdown(["run", *columns], [[name, *(short(row.get(c, "")) for c in columns)] for name, row in zip(names, rows)])
    return {"keys": keys, "rows": rows, "lines": [title, "", *body]}


def _csv_cells(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, Stat):
            out[key], out[f"{key} std"] = round(value.mean, 4), round(value.std, 4)
        else:
            out[key] = value
    return out


BLOCK = re.compile(r"(<!-- solopo\.report:(\w+) -->\n)(.*?)(<!-- /solopo\.report:\2 -->)", re.S)


def fill_blocks(text: str, blocks: dict[str, list[str]], where: str = "the document") -> str:
    """Replace the body of every `<!-- solopo.report:NAME -->` ... `<!-- /solopo.report:NAME -->` block with the
    lines of ``blocks[NAME]``, so that a hand-written page (a study's README) quotes tables that are regenerated,
    not typed. An unknown NAME, or a page without any block, is an error naming the page."""
    found = [m.group(2) for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(blocks))
    if not found or unknown:
        raise ValueError(f"{where}: " + (f"unknown generated block(s) {', '.join(unknown)}; known: " if unknown else
                         "no <!-- solopo.report:NAME --> ... <!-- /solopo.report:NAME --> block; NAME one of ")
                         + ", ".join(sorted(blocks)))
    return BLOCK.sub(lambda m: m.group(1) + "".join(line + "\n" for line in blocks[m.group(2)]) + m.group(4), text)
