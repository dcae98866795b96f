"""How much GPU time the paper_mini study needs on one H200, from the presets' sizes and assumed rates.

    python experiments/paper_mini/estimate.py                  # the whole study (3 seeds)
    python experiments/paper_mini/estimate.py --long-po-pairs  # if long_po gets pairs and trains too

Every job's work is counted in tokens (training, prefill of sampling and evaluation) and in generation steps,
and turned into seconds of a busy GPU with the rates below. Runs sharing the GPU are time-sliced, so the study
is bound by the sum of their GPU time; the per-process start-up (imports, CUDA, model) runs on the CPUs
meanwhile. The rates are assumptions, not measurements: the README of the study says where they come from.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.paper_mini.study import study_jobs  # noqa: E402
from experiments.studies.runner import leaders  # noqa: E402

CONF = ROOT / "solopo" / "conf"
TRAIN_TOKENS_PER_S = 70_000  # bf16 autocast, gradient checkpointing, 4 pairs of 4K tokens per step
PREFILL_TOKENS_PER_S = 150_000  # float32 weights with TF32 matmuls, float32 attention, 1-4K tokens, batches of 32-64
REFERENCE_TOKENS_PER_S = 200_000  # DPO's reference log-probs: forward only, bf16 autocast
DECODE_STEP_S = 0.005  # GPU time of one generation step of a batch (kernel launches dominate)
TEMPLATE = 40  # chat template and response tokens around a context
KEEP = {"short": 0.5, "long": 0.0}  # share of questions giving a pair: measured 8 of 12 on ~100-token contexts
UTILISATION = 0.85  # busy share of the GPU over the study (start-up at the beginning, the last jobs at the end)


def sizes(row: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment=paper_mini/{row}"])
    return {"long": cfg.data.long_len + TEMPLATE, "short": (cfg.data.short_len or 100) + TEMPLATE,
            "steps": cfg.trainer.max_steps, "batch": cfg.data.batch_size,
            "items": cfg.data.source.n_train + cfg.data.source.n_val,
            "k": cfg.data.sampling.k, "sample_batch": cfg.data.sampling.batch_size, "new": cfg.data.sampling.max_new_tokens,
            "eval_items": cfg.eval.n_items, "lengths": [n for n in cfg.eval.lengths if n != "short"],
            "depths": len(cfg.eval.depths), "eval_batch": cfg.eval.batch_size, "eval_new": cfg.eval.max_new_tokens}


def sequences(row: str, s: dict) -> list[int]:
    """Token lengths of the sequences one pair costs per training step."""
    return {"short_po": [s["short"]] * 2, "solopo": [s["short"]] * 2 + [s["long"]], "long_po": [s["long"]] * 2,
            "expand_long": [s["long"]] * 2, "solopo_both": [s["short"]] * 2 + [s["long"]] * 2,
            "solopo_detach": [s["short"]] * 2 + [s["long"]]}[row]


def evaluation_s(s: dict) -> float:
    prompts = s["eval_items"] * (1 + s["depths"] * len(s["lengths"]))
    tokens = s["eval_items"] * (100 + s["depths"] * sum(s["lengths"]))
    return tokens / PREFILL_TOKENS_PER_S + math.ceil(prompts / s["eval_batch"]) * s["eval_new"] * DECODE_STEP_S


def sampling_s(context: str, s: dict) -> float:
    tokens = s["items"] * s[context]  # each prompt is read once; its KV cache is shared by the k samples
    return tokens / PREFILL_TOKENS_PER_S + math.ceil(s["items"] * s["k"] / s["sample_batch"]) * s["new"] * DECODE_STEP_S


def job_seconds(job, leader: bool, long_po_pairs: bool) -> dict[str, float]:
    s = sizes(job.row)
    if job.row == "base":
        return {"eval": evaluation_s(s)}
    context = job.sampling_key[1]
    out = {"sampling": sampling_s(context, s) if leader else 0.0, "base eval": evaluation_s(s) if leader else 0.0}
    if context == "long" and not long_po_pairs:
        return out  # the run stops with "no pairs" once sampled
    pairs = s["items"] * (KEEP[context] or 0.5)
    out["train"] = s["steps"] * s["batch"] * sum(sequences(job.row, s)) / TRAIN_TOKENS_PER_S
    out["reference"] = pairs * sum(sequences(job.row, s)) / REFERENCE_TOKENS_PER_S if job.algo == "dpo" else 0.0
    out["eval"] = evaluation_s(s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--long-po-pairs", action="store_true", help="assume long_po gets pairs and trains")
    args = parser.parse_args()
    jobs = study_jobs(tuple(int(x) for x in args.seeds.split(",")))
    first = leaders(jobs)
    totals: dict[str, float] = {}
    by_row: dict[str, list[float]] = {}
    for job in jobs:
        parts = job_seconds(job, first[job.sampling_key] is job, args.long_po_pairs)
        for name, seconds in parts.items():
            totals[name] = totals.get(name, 0.0) + seconds
        by_row.setdefault(job.row, []).append(sum(parts.values()))
    print(f"{len(jobs)} jobs; GPU seconds per job (mean, max) by row:")
    for row, values in by_row.items():
        print(f"  {row:<12} {len(values):>2} jobs  {sum(values) / len(values):6.1f}  {max(values):6.1f}")
    busy = sum(totals.values())
    print("GPU seconds by kind of work: " + ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))
    print(f"total GPU-busy {busy:.0f} s = {busy / 60:.1f} min; wall at {UTILISATION:.0%} utilisation "
          f"{busy / UTILISATION / 60:.1f} min (+ about 1 min of set-up and packing per call)")


if __name__ == "__main__":
    main()
