"""The efficiency study's summary, generated from the tables of results/: SoLoPO against Long-PO (same code) and
TRL per context length, the longest trainable context, the log-prob step's memory, packed rows, and each target.

    python experiments/efficiency/summary.py --results experiments/efficiency/results

Reads solopo_grid, solopo_max_length, logp_memory, trl_long_po and (when present) solopo_grid_packing, _shared and
_defaults .json; writes summary.md and summary.json next to them. Every figure is read or divided from those rows.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from summary_defaults import defaults_sections, issue_targets
from summary_rows import H200_PEAK_TFLOPS, cell, flops, fmt, fmt_step, length_label, load, ok, ratio

METHOD_LABELS = {"solopo": "SoLoPO chosen-only", "solopo_both": "SoLoPO both-responses", "long_po": "Long-PO"}
TARGETS = {"solopo_vs_long_po": 0.5, "solopo_vs_trl": 0.5, "longest": 262144, "mfu": 0.65}


def grid_section(grid: list[dict], trl: list[dict], model: str, algo: str) -> tuple[list[str], list[dict]]:
    lengths = sorted({r["long_len"] for r in grid if r["model"] == model and r["algo"] == algo})
    trl_name = f"trl-{algo}"
    lines = [f"### {model}, {algo.upper()}", "",
             "| long context | SoLoPO | SoLoPO both | Long-PO | SoLoPO / Long-PO | FLOP ratio | TRL | SoLoPO / TRL |",
             "|---|---|---|---|---|---|---|---|"]
    out = []
    for n in lengths:
        key = dict(model=model, algo=algo, variant="padded", long_len=n)
        so, both, lp = (cell(grid, method=m, **key) for m in ("solopo", "solopo_both", "long_po"))
        tr = cell(trl, model=model, trainer=trl_name, long_len=n)
        row = {"model": model, "algo": algo, "long_len": n, "solopo_vs_long_po": ratio(so, lp),
               "flop_ratio": flops(so) / flops(lp) if ok(so) and ok(lp) else None, "solopo_vs_trl": ratio(so, tr)}
        out.append(row)
        lines.append(f"| {length_label(n)} | {fmt_step(so)} | {fmt_step(both)} | {fmt_step(lp)} | "
                     f"{fmt(row['solopo_vs_long_po'])} | {fmt(row['flop_ratio'])} | {fmt_step(tr)} | {fmt(row['solopo_vs_trl'])} |")
    return lines + [""], out


def next_length(row: dict) -> str:
    """What happened one length past the longest trained: the failure and its length; no try, where the longest
    length the probe was given trained; else a probe cut short by its call's time (bench.py --resume goes on)."""
    if not row["first_failure"]:
        probe_to = row.get("probe_to") or 0  # rows from before this field: finished probes
        return "not tried" if (row["max_long_len"] or 0) >= probe_to else \
            f"not reached ({length_label(probe_to)} asked for): the call's time ran out"
    return row["first_failure"] + (f" at {length_label(row['failed_len'])}" if row.get("failed_len") else "")


def longest_section(max_rows: list[dict], trl: list[dict], model: str) -> tuple[list[str], dict]:
    lines = ["| configuration | longest long context trained | step there | peak there | next length |", "|---|---|---|---|---|"]
    found = {}
    order = list(METHOD_LABELS)
    for r in sorted((r for r in max_rows if r["model"] == model), key=lambda r: (order.index(r["method"])
                                                                                 if r["method"] in order else len(order))):
        found[r["method"]] = max(found.get(r["method"]) or 0, r["max_long_len"] or 0) or None  # its best variant
        if r.get("failed_len"):  # the shortest length a variant of it failed at: "no" below it, not "not measured"
            found[f"{r['method']}/failed_at"] = min(found.get(f"{r['method']}/failed_at") or r["failed_len"],
                                                    r["failed_len"])
        lines.append(f"| {METHOD_LABELS.get(r['method'], r['method'])} ({r.get('variant', 'padded')}) | {length_label(r['max_long_len']) if r['max_long_len'] else 'none'} | "
                     f"{fmt(r['step_s_at_max'], 1)} s | {fmt(r['peak_gib_at_max'], 1)} GiB | {next_length(r)} |")
    trl_dpo = sorted((r for r in trl if r["model"] == model and r["trainer"] == "trl-dpo"), key=lambda r: r["long_len"])
    if trl_dpo:
        trained = [r for r in trl_dpo if ok(r)]
        best = trained[-1] if trained else None
        failed = [r for r in trl_dpo if not ok(r) and (best is None or r["long_len"] > best["long_len"])]
        found["trl-dpo"] = best and best["long_len"]
        lines.append(f"| TRL DPOTrainer | {length_label(best['long_len']) if best else 'none'} | {fmt(best and best['step_s'], 1)} s | "
                     f"{fmt(best and best['peak_gib'], 1)} GiB | {failed[0]['status'] + ' at ' + length_label(failed[0]['long_len']) if failed else 'not tried (the longest measured)'} |")
    return lines + [""], found


def logp_section(rows: list[dict], model: str) -> tuple[list[str], dict]:
    lengths = sorted({r["context_len"] for r in rows if r["model"] == model})
    lines = ["| context | response-only chunks | full-vocabulary logits |", "|---|---|---|"]
    by = {v: [cell(rows, model=model, variant=v, context_len=n) for n in lengths] for v in ("response_only", "full_logits")}
    show = lambda r: "-" if r is None else (f"{r['extra_peak_gib']:.2f} GiB" if isinstance(r["extra_peak_gib"], float) else str(r["extra_peak_gib"]))  # noqa: E731
    for i, n in enumerate(lengths):
        lines.append(f"| {length_label(n)} | {show(by['response_only'][i])} | {show(by['full_logits'][i])} |")
    measured = [(n, r["extra_peak_gib"]) for n, r in zip(lengths, by["response_only"]) if r and isinstance(r["extra_peak_gib"], float)]
    return lines + [""], {"response_only": measured}


SHORT_LABELS = {"solopo": "SoLoPO", "solopo_both": "SoLoPO both", "long_po": "Long-PO"}


def packing_section(packed: list[dict], model: str, algo: str,
                    methods: tuple[str, ...] = ("solopo", "long_po")) -> tuple[list[str], list[dict]]:
    """Step times of each method in each variant of a --tag table, and SoLoPO / Long-PO with each at its best."""
    rows = [r for r in packed if r["model"] == model and r["algo"] == algo]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lengths = sorted({r["long_len"] for r in rows})
    head = " | ".join(f"{SHORT_LABELS[m]} {v}" for m in methods for v in variants)
    lines = [f"| long context | {head} | SoLoPO / Long-PO, best of each |", "|---|" + "---|" * (len(methods) * len(variants) + 1)]
    out = []
    for n in lengths:
        cells = {(m, v): cell(rows, method=m, variant=v, long_len=n) for m in methods for v in variants}
        best = {m: min((c["step_s"] for (mm, _), c in cells.items() if mm == m and ok(c)), default=None) for m in methods}
        best_ratio = best["solopo"] / best["long_po"] if best["solopo"] and best["long_po"] else None
        out.append({"long_len": n, "best_ratio": best_ratio})
        shown = " | ".join(fmt_step(cells[m, v]).split(",")[0] for m in methods for v in variants)
        lines.append(f"| {length_label(n)} | {shown} | {fmt(best_ratio)} |")
    return lines + [""], out


def mfu(grid: list[dict], model: str, length: int, response: int) -> dict | None:
    """Long-PO's training step at ``length``: useful TFLOP/s (causal attention) and under the GPU notes' convention
    (dense attention counted), as a fraction of the H200's measured peak."""
    row = cell(grid, model=model, algo="dpo", method="long_po", variant="padded", long_len=length)
    if not ok(row):
        return None
    from common import Shape, shape_fields  # torch and hydra only when a grid row needs the model's shape

    from transformers import AutoConfig
    shape = Shape.of(AutoConfig.for_model(**shape_fields(model)))
    dense = 2 * shape.train_flops(length, response, causal=False)  # two long sequences per Long-PO step
    return {"causal_tflops": row["tflops"], "dense_tflops": dense / row["step_s"] / 1e12,
            "dense_fraction": dense / row["step_s"] / 1e12 / H200_PEAK_TFLOPS}


def targets(grid_rows: list[dict], packing: list[dict], shared: list[dict], longest: dict, logp: dict,
            mfu_32k: dict | None) -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]
    def targeted(rows):  # the targets concern the 1.5B shape's DPO step
        return [r for r in rows if r["model"] == "qwen2.5-1.5b" and r["algo"] == "dpo"]

    dpo = targeted(grid_rows)
    best = {p["long_len"]: p["best_ratio"] for p in targeted(packing)}
    long8 = [r for r in dpo if r["long_len"] >= 8192 and r["solopo_vs_long_po"] is not None]
    values = [min(x for x in (r["solopo_vs_long_po"], best.get(r["long_len"])) if x is not None) for r in long8]
    # Long-PO sharing its prompt between the two responses: the fairer baseline, where measured
    shared = [r for r in targeted(shared) if r["best_ratio"] is not None]
    against_shared = ("; against Long-PO with shared prompts, best of each: "
                      + ", ".join(f"{length_label(r['long_len'])} {r['best_ratio']:.2f}" for r in shared)) if shared else ""
    lines.append("| SoLoPO <= 0.5x Long-PO's step (1.5B, DPO), 8K and beyond | "
                 + ", ".join(f"{length_label(r['long_len'])} {v:.2f} (FLOP ratio {r['flop_ratio']:.2f})" for r, v in zip(long8, values))
                 + against_shared
                 + f" | {'yes' if values and max(values + [r['best_ratio'] for r in shared]) <= TARGETS['solopo_vs_long_po'] else 'no'} |")
    trl = [r for r in dpo if r["long_len"] in (16384, 32768)]
    trl_values = [r["solopo_vs_trl"] for r in trl]
    lines.append("| SoLoPO <= 0.5x TRL DPOTrainer's step (1.5B), 16K and 32K | "
                 + ", ".join(f"{length_label(r['long_len'])} {fmt(r['solopo_vs_trl'])}" for r in trl)
                 + f" | {'yes' if trl_values and None not in trl_values and max(trl_values) <= TARGETS['solopo_vs_trl'] else 'no'} |")
    so, tr = longest.get("solopo"), longest.get("trl-dpo")
    lines.append(f"| longest trainable (1.5B) >= 256K, TRL under 128K | SoLoPO {length_label(so) if so else 'none'}, "
                 f"TRL DPOTrainer {length_label(tr) if tr else 'none'} | "
                 f"{'yes' if so and so >= TARGETS['longest'] else 'no'} for SoLoPO; "
                 f"{'not measured' if 'trl-dpo' not in longest else 'no' if tr and tr >= 131072 else 'yes'} for TRL under 128K |")
    if mfu_32k:
        lines.append(f"| Long-PO's step at 32K >= 65% of {H200_PEAK_TFLOPS:.0f} TFLOP/s | {mfu_32k['dense_tflops']:.0f} TFLOP/s "
                     f"({100 * mfu_32k['dense_fraction']:.0f}%) counting attention dense as the GPU notes do; "
                     f"{mfu_32k['causal_tflops']:.0f} counting causal attention only | "
                     f"{'yes' if mfu_32k['dense_fraction'] >= TARGETS['mfu'] else 'no'} |")
    if logp["response_only"]:
        (first_n, first), (last_n, last) = logp["response_only"][0], logp["response_only"][-1]
        # flat: no growth from the shortest context to the longest (10% slack for allocator rounding)
        lines.append(f"| log-prob step's peak memory independent of context | response-only chunks {first:.2f} GiB at "
                     f"{length_label(first_n)}, {last:.2f} GiB at {length_label(last_n)} | {'yes' if last <= 1.1 * first else 'no'} |")
    return lines + [""]


def layout_sections(packed: list[dict], shared: list[dict], summary: dict) -> list[str]:
    """The packed-rows and shared-prompt tables, their rows added to ``summary``."""
    md: list[str] = []
    summary["packing"] = []
    if packed:
        md += ["## Packed rows (step time; `bench.py --tag _packing`)", ""]
        for model in dict.fromkeys(r["model"] for r in packed):
            for algo in dict.fromkeys(r["algo"] for r in packed if r["model"] == model):
                lines, rows = packing_section(packed, model, algo)
                md += [f"### {model}, {algo.upper()}", ""] + lines
                summary["packing"] += [{"model": model, "algo": algo, **r} for r in rows]
    summary["shared"] = []
    if shared:
        md += ["## Shared prompts (step time; `bench.py --tag _shared`: `packing=shared_prompt`)", ""]
        for model in dict.fromkeys(r["model"] for r in shared):
            for algo in dict.fromkeys(r["algo"] for r in shared if r["model"] == model):
                lines, rows = packing_section(shared, model, algo, ("solopo", "solopo_both", "long_po"))
                md += [f"### {model}, {algo.upper()}", ""] + lines
                summary["shared"] += [{"model": model, "algo": algo, **r} for r in rows]
    return md


def summarise(results: Path) -> dict:
    grid, max_rows, logp_rows, trl = (load(results, n) for n in ("solopo_grid", "solopo_max_length", "logp_memory", "trl_long_po"))
    packed, shared = load(results, "solopo_grid_packing"), load(results, "solopo_grid_shared")
    defaults = load(results, "solopo_grid_defaults")
    commits = sorted({r.get("commit") for rows in (grid, max_rows, logp_rows, trl, packed, shared, defaults)
                      for r in rows} - {None})
    md = ["# Efficiency summary", "",
          "Generated by `summary.py` from the tables beside it (`experiments/efficiency/run.sh` and `run_defaults.sh` "
          "measure them; each row of "
          f"those names the commit that measured it: {', '.join(commits)}). One pair per step, short context 1K, responses 64 "
          "tokens, bf16, gradient checkpointing, reference log-probs precomputed. Cells: step time and peak GPU memory.", ""]
    summary: dict = {"grid": []}  # each section only where its tables are (a folder of one run's defaults has one)
    md += ["## Step time by long-context length", ""] if grid else []
    for model in dict.fromkeys(r["model"] for r in grid):
        for algo in dict.fromkeys(r["algo"] for r in grid if r["model"] == model):
            lines, rows = grid_section(grid, trl, model, algo)
            md += lines
            summary["grid"] += rows
    md += ["## Longest long context trained (one DPO step, one pair)", ""] if grid + max_rows + trl else []
    summary["longest_by_model"] = {}
    for model in dict.fromkeys([r["model"] for r in grid + max_rows + trl]):  # the grid's order first
        lines, summary["longest_by_model"][model] = longest_section(max_rows, trl, model)
        md += [f"### {model}", ""] + lines
    summary["longest"] = summary["longest_by_model"].get("qwen2.5-1.5b", {})
    lines, summary["logp"] = logp_section(logp_rows, "qwen2.5-1.5b")
    md += ["## Peak memory of the log-prob step alone (LM head + log-softmax, forward and backward, 64 response tokens)",
           "", "### qwen2.5-1.5b", ""] + lines if logp_rows else []
    md += layout_sections(packed, shared, summary)
    section, summary["defaults"] = defaults_sections(results, defaults, trl)
    md += section
    grid_meta = json.loads((results / "solopo_grid.json").read_text())["meta"] if grid else {}
    summary["mfu_32k"] = mfu(grid, "qwen2.5-1.5b", 32768, grid_meta.get("response_len", 64))
    if grid:
        md += ["## Against the targets", ""] + targets(summary["grid"], summary["packing"], summary["shared"],
                                                       summary["longest"], summary["logp"], summary["mfu_32k"])
    if defaults:
        md += ["## Against issue 24's targets (defaults)", ""] + issue_targets(summary["defaults"], summary["longest"])
    (results / "summary.md").write_text("\n".join(md))
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if not args.results.is_dir():
        parser.exit(2, f"error: --results {args.results}: no such folder (the tables summary.py reads)\n")
    summarise(args.results)
    print(args.results / "summary.md")


if __name__ == "__main__":
    main()
