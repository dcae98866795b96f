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

H200_PEAK_TFLOPS = 790.0  # bf16 matmul peak measured on the H200 (shared GPU notes)
METHOD_LABELS = {"solopo": "SoLoPO chosen-only", "solopo_both": "SoLoPO both-responses", "long_po": "Long-PO"}
TARGETS = {"solopo_vs_long_po": 0.5, "solopo_vs_trl": 0.5, "longest": 262144, "mfu": 0.65}


def load(results: Path, name: str) -> list[dict]:
    path = results / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def cell(rows: list[dict], **key) -> dict | None:
    """The last row matching key (a later measurement of the same cell wins)."""
    found = [r for r in rows if all(r.get(k) == v for k, v in key.items())]
    return found[-1] if found else None


def ok(row: dict | None) -> bool:
    return bool(row) and row.get("status") == "ok"


def ratio(a: dict | None, b: dict | None, field: str = "step_s") -> float | None:
    return a[field] / b[field] if ok(a) and ok(b) else None


def flops(row: dict) -> float:
    """Useful FLOPs of one step (the bench's count), back from its TFLOP/s and step time."""
    return row["tflops"] * row["step_s"]


def fmt_step(row: dict | None) -> str:
    if not row:
        return "-"
    if not ok(row):
        return str(row.get("status"))
    return f"{row['step_s']:.3g} s, {row['peak_gib']:.1f} GiB"


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def length_label(n: int) -> str:
    return f"{n // 1024}K"


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


# Issue 24's targets (one H200, SoLoPO against Long-PO with both at their defaults): the step-time ratio within the
# FLOP ratio plus a slack, per model and lengths; SoLoPO / TRL; GPU busy; useful MFU; longest context; the 7B shape.
DEFAULT_SLACK = {("qwen2.5-1.5b", 4096): 0.10, **{("qwen2.5-1.5b", n): 0.05 for n in (8192, 16384, 32768, 65536)},
                 **{("smollm2", n): 0.05 for n in (16384, 32768, 65536)}, ("qwen2.5-7b", 8192): 0.03}
TRL_CAPS = {16384: 0.58, 32768: 0.54}
GPU_BUSY, USEFUL_MFU, LONGEST_1M = 0.85, 0.55, 1 << 20


def copied_flops(row: dict) -> float | None:
    """A step's useful TFLOPs with a prompt per response, whatever its layout (older rows: padded ones only)."""
    if not ok(row):
        return None
    return row.get("tflop_copied") or (flops(row) if row.get("variant") == "padded" else None)


def table_gpu(results: Path, name: str) -> str | None:
    """The GPU a table's last call ran on (its meta), or None for a table that is not there."""
    path = results / f"{name}.json"
    return json.loads(path.read_text()).get("meta", {}).get("gpu") if path.exists() else None


def same_gpu_note(results: Path) -> str:
    defaults, trl = table_gpu(results, "solopo_grid_defaults"), table_gpu(results, "trl_long_po")
    return f"defaults on {defaults or '?'}, TRL on {trl or '?'}"


def best_hand_picked(rows: list[dict], model: str, algo: str, method: str, n: int) -> dict | None:
    """The fastest measured cell of ``rows`` other than the defaults (the defaults table: the same run's)."""
    found = [r for r in rows if ok(r) and r["model"] == model and r["algo"] == algo and r["method"] == method
             and r["long_len"] == n and r["variant"] != "defaults"]
    return min(found, key=lambda r: r["step_s"]) if found else None


def fmt_default(row: dict | None) -> str:
    if not ok(row):
        return fmt_step(row)
    layers = row.get("checkpointed_layers")
    return f"{row['step_s']:.3g} s ({row.get('layout', '?')}, {layers} ckpt)" if layers is not None else fmt_step(row)


def defaults_section(defaults: list[dict], every: list[dict], trl: list[dict], model: str,
                     algo: str) -> tuple[list[str], list[dict]]:
    """Per length: SoLoPO and Long-PO at their defaults and at their best hand-picked cells, both ratios, the FLOP
    ratio, SoLoPO / TRL, SoLoPO's GPU-busy fraction and the memory predicted against measured."""
    lengths = sorted({r["long_len"] for r in defaults if r["model"] == model and r["algo"] == algo})
    lines = ["| long context | SoLoPO defaults | SoLoPO best | Long-PO defaults | Long-PO best | SoLoPO / Long-PO, "
             "defaults | best of each | FLOP ratio | work ratio as run | SoLoPO / TRL | SoLoPO GPU busy | SoLoPO peak, "
             "predicted / measured |", "|---|" + "---|" * 11]
    out = []
    for n in lengths:
        so, lp = (cell(defaults, model=model, algo=algo, method=m, variant="defaults", long_len=n) for m in ("solopo", "long_po"))
        so_best, lp_best = (best_hand_picked(every, model, algo, m, n) for m in ("solopo", "long_po"))
        flop_so, flop_lp = copied_flops(so), copied_flops(lp)
        tr = cell(trl, model=model, trainer=f"trl-{algo}", long_len=n)
        row = {"model": model, "algo": algo, "long_len": n, "defaults_ratio": ratio(so, lp), "best_ratio": ratio(so_best, lp_best),
               "flop_ratio": flop_so / flop_lp if flop_so and flop_lp else None, "solopo_vs_trl": ratio(so, tr),
               "work_ratio": flops(so) / flops(lp) if ok(so) and ok(lp) else None,
               "gpu_busy": so.get("gpu_busy") if ok(so) else None,
               "long_po_tflops": lp["tflops"] if ok(lp) else None,
               "peak": (so["predicted_peak_gib"], so["peak_gib"]) if ok(so) and "predicted_peak_gib" in so else None}
        out.append(row)
        peak = f"{row['peak'][0]:.1f} / {row['peak'][1]:.1f} GiB" if row["peak"] else "-"
        busy = f"{100 * row['gpu_busy']:.0f}%" if row["gpu_busy"] is not None else "-"
        lines.append(f"| {length_label(n)} | {fmt_default(so)} | {fmt_step(so_best).split(',')[0]} "
                     f"({so_best['variant'] if so_best else '-'}){earlier(so_best, so)} | {fmt_default(lp)} | "
                     f"{fmt_step(lp_best).split(',')[0]} ({lp_best['variant'] if lp_best else '-'}){earlier(lp_best, lp)} | "
                     f"{fmt(row['defaults_ratio'])} | {fmt(row['best_ratio'])} | "
                     f"{fmt(row['flop_ratio'])} | {fmt(row['work_ratio'])} | {fmt(row['solopo_vs_trl'])} | {busy} | {peak} |")
    return lines + [""], out


def earlier(best: dict | None, default: dict | None) -> str:
    """" †" where a hand-picked cell was measured at another commit (another run) than the defaults beside it:
    run_defaults.sh resumes, keeping cells a call measured before, so the two compare loosely there."""
    return " †" if best and default and best.get("commit") != default.get("commit") else ""


def verdict(met: bool | None, measured: str) -> str:
    return f"{measured} | {'not measured' if met is None else 'yes' if met else 'no'} |"


def limit_line(target: str, cells: list, limit: str) -> str:
    """SoLoPO / Long-PO at their defaults per length against ``limit`` (a row's flop_ratio, or its work_ratio: the work
    each default layout does, a shared prompt counted once) plus the length's slack; met where every length is."""
    bound = lambda r, slack: r and r.get(limit) is not None and r[limit] + slack  # noqa: E731
    known = [(r["defaults_ratio"], bound(r, slack)) for _, r, slack in cells
             if r and r["defaults_ratio"] is not None and r.get(limit) is not None]
    shown = [f"{length_label(n)} {fmt(r and r['defaults_ratio'])} (limit {fmt(bound(r, slack) or None)})"
             for n, r, slack in cells]
    return (f"| {target} | "
            + verdict(None if len(known) < len(cells) else all(v <= cap for v, cap in known), ", ".join(shown)))


def issue_targets(rows: list[dict], longest: dict) -> list[str]:
    """One line per target of issue 24, from the defaults section's rows and the longest-context probes."""
    by = {(r["model"], r["long_len"]): r for r in rows if r["algo"] == "dpo"}
    lines = ["| target | measured | met |", "|---|---|---|"]
    for model in dict.fromkeys(m for m, _ in DEFAULT_SLACK):
        cells = [(n, by.get((model, n)), slack) for (m, n), slack in DEFAULT_SLACK.items() if m == model]
        lines.append(limit_line(f"{model}: SoLoPO / Long-PO at their defaults within the FLOP ratio + slack", cells,
                                "flop_ratio"))
        lines.append(limit_line(f"{model}: the same, within the work ratio as run + slack (not the issue's target)",
                                cells, "work_ratio"))
    trl = [(n, by.get(("qwen2.5-1.5b", n))) for n in TRL_CAPS]
    trl_known = [r["solopo_vs_trl"] for _, r in trl if r and r["solopo_vs_trl"] is not None]
    lines.append("| SoLoPO / TRL DPOTrainer <= 0.58 at 16K, 0.54 at 32K (1.5B) | " + verdict(
        None if len(trl_known) < len(trl) else all(r["solopo_vs_trl"] <= TRL_CAPS[n] for n, r in trl),
        ", ".join(f"{length_label(n)} {fmt(r and r['solopo_vs_trl'])}" for n, r in trl)))
    busy = [(n, r["gpu_busy"]) for (m, n), r in sorted(by.items()) if m == "qwen2.5-1.5b" and r["gpu_busy"] is not None]
    lines.append(f"| GPU busy >= {GPU_BUSY:.0%} of the SoLoPO step from 4K (1.5B) | " + verdict(
        min(b for _, b in busy) >= GPU_BUSY if busy else None, ", ".join(f"{length_label(n)} {b:.0%}" for n, b in busy) or "-"))
    at_32k = by.get(("qwen2.5-1.5b", 32768))
    mfu_value = at_32k and at_32k["long_po_tflops"] and at_32k["long_po_tflops"] / H200_PEAK_TFLOPS
    lines.append(f"| useful MFU (causal attention once) of the 32K long step >= {USEFUL_MFU:.0%} | " + verdict(
        None if not mfu_value else mfu_value >= USEFUL_MFU,
        f"{at_32k['long_po_tflops']:.0f} TFLOP/s = {mfu_value:.0%} of {H200_PEAK_TFLOPS:.0f}" if mfu_value else "-"))
    so = longest.get("solopo")
    lines.append("| longest SoLoPO context on one H200 (1.5B) >= 1M | " + verdict(
        None if not so else so >= LONGEST_1M, length_label(so) if so else "-"))
    return lines + [""]


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
    commits = sorted({r.get("commit") for rows in (grid, max_rows, logp_rows, trl, packed, shared,
                                                    load(results, "solopo_grid_defaults")) for r in rows} - {None})
    md = ["# Efficiency summary", "",
          "Generated by `summary.py` from the tables beside it (`bash experiments/efficiency/run.sh` measures them; each row of "
          f"those names the commit that measured it: {', '.join(commits)}). One pair per step, short context 1K, responses 64 "
          "tokens, bf16, gradient checkpointing, reference log-probs precomputed. Cells: step time and peak GPU memory.", "",
          "## Step time by long-context length", ""]
    summary: dict = {"grid": []}
    for model in dict.fromkeys(r["model"] for r in grid):
        for algo in dict.fromkeys(r["algo"] for r in grid if r["model"] == model):
            lines, rows = grid_section(grid, trl, model, algo)
            md += lines
            summary["grid"] += rows
    md += ["## Longest long context trained (one DPO step, one pair)", ""]
    summary["longest_by_model"] = {}
    for model in dict.fromkeys([r["model"] for r in grid + max_rows + trl]):  # the grid's order first
        lines, summary["longest_by_model"][model] = longest_section(max_rows, trl, model)
        md += [f"### {model}", ""] + lines
    summary["longest"] = summary["longest_by_model"].get("qwen2.5-1.5b", {})
    md += ["## Peak memory of the log-prob step alone (LM head + log-softmax, forward and backward, 64 response tokens)", ""]
    lines, summary["logp"] = logp_section(logp_rows, "qwen2.5-1.5b")
    md += ["### qwen2.5-1.5b", ""] + lines
    md += layout_sections(packed, shared, summary)
    defaults = load(results, "solopo_grid_defaults")
    summary["defaults"] = []
    if defaults:
        md += ["## Defaults against the best hand-picked cells (`run_defaults.sh`: `bench.py --tag _defaults`)", "",
               "Defaults: what a run gets without flags (`packing=auto`, `model.gradient_checkpointing=auto`, the "
               "shipped attention kernel), with the layout it chose and the decoder layers it checkpointed. Best: the "
               "variant the committed tables found fastest for the cell, measured by run_defaults.sh (every layer "
               "checkpointed); † marks one measured in another run than the defaults beside it (a call cut short "
               "resumes, keeping what earlier calls measured): compare those loosely. FLOP ratio: SoLoPO's useful FLOPs over Long-PO's, each response with its own copy of "
               "the prompt. Work ratio as run: the same for the work each default layout does (Long-PO's shared prompt "
               "counted once). GPU busy: kernel time over the step's wall time under the profiler. SoLoPO / TRL only where "
               f"TRL's table was measured on the same GPU ({same_gpu_note(results)}).", ""]
        same_trl = trl if table_gpu(results, "trl_long_po") == table_gpu(results, "solopo_grid_defaults") else []
        for model in dict.fromkeys(r["model"] for r in defaults):
            for algo in dict.fromkeys(r["algo"] for r in defaults if r["model"] == model):
                lines, rows = defaults_section(defaults, defaults, same_trl, model, algo)
                md += [f"### {model}, {algo.upper()}", ""] + lines
                summary["defaults"] += rows
    grid_meta = json.loads((results / "solopo_grid.json").read_text())["meta"] if grid else {}
    summary["mfu_32k"] = mfu(grid, "qwen2.5-1.5b", 32768, grid_meta.get("response_len", 64))
    md += ["## Against the targets", ""] + targets(summary["grid"], summary["packing"], summary["shared"], summary["longest"],
                                                   summary["logp"], summary["mfu_32k"])
    if defaults:
        md += ["## Against issue 24's targets (defaults)", ""] + issue_targets(summary["defaults"], summary["longest"])
    (results / "summary.md").write_text("\n".join(md))
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    summarise(args.results)
    print(args.results / "summary.md")


if __name__ == "__main__":
    main()
