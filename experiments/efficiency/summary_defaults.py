"""The efficiency summary's defaults section (run_defaults.sh: what a run gets without flags against the best
hand-picked cells) and issue 24's targets, which are read from it."""
from __future__ import annotations

import json
from pathlib import Path

from summary_rows import H200_PEAK_TFLOPS, cell, flops, fmt, fmt_step, length_label, ok, ratio

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
    return f"defaults on {defaults or '?'}, " + (f"TRL on {trl}" if trl else "TRL not measured beside them")


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
    so, failed_at = longest.get("solopo"), longest.get("solopo/failed_at")
    met = True if so and so >= LONGEST_1M else False if failed_at and failed_at <= LONGEST_1M else None
    lines.append("| longest SoLoPO context on one H200 (1.5B) >= 1M | " + verdict(
        met, (length_label(so) + ("" if failed_at else " (the longest tried)")) if so else "-"))
    return lines + [""]


def defaults_sections(results: Path, defaults: list[dict], trl: list[dict]) -> tuple[list[str], list[dict]]:
    """The defaults against the best hand-picked cells, a table per model and algorithm, and their rows (none without
    the defaults table)."""
    md: list[str] = []
    rows: list[dict] = []
    if not defaults:
        return md, rows
    md += ["## Defaults against the best hand-picked cells (`run_defaults.sh`: `bench.py --tag _defaults`)", "",
           "Defaults: what a run gets without flags (`packing=auto`, `model.gradient_checkpointing=auto`, the "
           "shipped attention kernel), with the layout it chose and the decoder layers it checkpointed. Best: the "
           "variant the committed tables found fastest for the cell, measured by run_defaults.sh (every layer "
           "checkpointed); † marks one measured in another run than the defaults beside it (a call cut short "
           "resumes, keeping what earlier calls measured): compare those loosely. FLOP ratio: SoLoPO's useful FLOPs "
           "over Long-PO's, each response with its own copy of the prompt. Work ratio as run: the same for the work each default layout does (Long-PO's shared prompt "
           "counted once). GPU busy: kernel time over the step's wall time under the profiler. SoLoPO / TRL only where "
           f"TRL's table was measured on the same GPU ({same_gpu_note(results)}).", ""]
    same_trl = trl if table_gpu(results, "trl_long_po") == table_gpu(results, "solopo_grid_defaults") else []
    for model in dict.fromkeys(r["model"] for r in defaults):
        for algo in dict.fromkeys(r["algo"] for r in defaults if r["model"] == model):
            lines, found = defaults_section(defaults, defaults, same_trl, model, algo)
            md += [f"### {model}, {algo.upper()}", ""] + lines
            rows += found
    return md, rows
