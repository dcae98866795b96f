"""How much H200 time the decisive study needs after the speed-ups, and in how many resumable parts.

    python experiments/decisive/estimate.py                       # the whole plan
    python experiments/decisive/estimate.py --ablation-algos simpo,orpo --regime-b-length 1536

Each job's work (prompts sampled, answers evaluated, tokens trained, reference tokens) comes from the presets
(conf/experiment/decisive/) and turns into seconds of a busy GPU with the rates below. The generation rates are the
issue's targets for experiments/sampling/speed.py (one H200, the 135M model alone); replace them with speed.py's
measured ones once it has run (--sampling-short-s and the others). The GPU is shared by several jobs at once and
the study is bound by the sum of their GPU time (paper_mini measured the per-job start-up to overlap).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.decisive.curve import overrides as regime_b  # noqa: E402
from experiments.decisive.jobs import RA_ROWS, study_jobs, with_lengths  # noqa: E402
from experiments.studies.runner import leaders  # noqa: E402

TEMPLATE = 40  # chat template and question tokens around a context
EVIDENCE = 110  # x_short when it is the evidence alone
TRAIN_TOKENS_PER_S = 70_000  # paper_mini's assumption: bf16, gradient checkpointing, 4 pairs a step
STEP_OVERHEAD_S = 0.15  # launch-bound floor of a step of short sequences
REFERENCE_TOKENS_PER_S = 200_000  # DPO's reference log-probs: forward only
KEEP = 0.45  # share of training questions giving a pair (paper_mini: 121 of 256 on x_short)
UTILISATION = 0.85  # busy share of the GPU over a part (start-up at its beginning, the last jobs at its end)
PART_S = 540  # one resumable part: 9 minutes of device time
PART_OVERHEAD_S = 60  # per part: machine set-up, the model cache, the report and the archive


def rates(args) -> dict[str, tuple[float, float]]:
    """(seconds at EVIDENCE tokens, seconds at 4K tokens) per sampled prompt (k samples) and per greedy answer, from
    the targets: 256 prompts x 8 samples in 10 s short and 45 s at 4K; 480 answers at 4K in 10 s (short: decode-bound,
    assumed 1 ms an answer)."""
    return {"sample": (args.sampling_short_s / 256, args.sampling_4k_s / 256),
            "answer": (0.001, args.eval_4k_s / 480)}


def per_item(rate: tuple[float, float], tokens: int) -> float:
    """Linear in the prompt's length between the two measured points."""
    short, long = rate
    return short + (long - short) * (tokens - EVIDENCE) / (4096 + TEMPLATE - EVIDENCE)


def sizes(job) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment=decisive/{job.regime}", *job.lengths])
    return {"long": cfg.data.long_len + TEMPLATE, "short": (cfg.data.short_len or EVIDENCE) + TEMPLATE,
            "steps": cfg.trainer.max_steps, "batch": cfg.data.batch_size,
            "items": cfg.data.source.n_train + cfg.data.source.n_val, "eval_items": cfg.eval.n_items,
            "lengths": [int(n) for n in cfg.eval.lengths if n != "short"], "depths": len(cfg.eval.depths)}


def evaluation_s(s: dict, r: dict) -> float:
    cases = [EVIDENCE + TEMPLATE] + [n + TEMPLATE for n in s["lengths"] if n <= 8192 - 64] * s["depths"]
    return s["eval_items"] * sum(per_item(r["answer"], n) for n in cases)


def job_seconds(job, leader: bool, s: dict, r: dict) -> dict[str, float]:
    if job.row == "base":
        return {"eval": evaluation_s(s, r)}
    context = s["long"] if job.row == "long_po" else s["short"]
    out = {"sampling": s["items"] * per_item(r["sample"], context) if leader else 0.0}
    per_pair = {"short_po": [s["short"]] * 2, "long_po": [s["long"]] * 2,
                "solopo_both": [s["short"]] * 2 + [s["long"]] * 2}.get(job.row, [s["short"]] * 2 + [s["long"]])
    tokens = s["steps"] * s["batch"] * sum(per_pair)
    out["training"] = tokens / TRAIN_TOKENS_PER_S + s["steps"] * STEP_OVERHEAD_S
    out["reference"] = s["items"] * KEEP * sum(per_pair) / REFERENCE_TOKENS_PER_S if job.algo == "dpo" else 0.0
    out["eval"] = evaluation_s(s, r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime-b-length", type=int, default=1024, help="x_long of regime (b) (curve.py's choice)")
    parser.add_argument("--ablation-algos", default="simpo")
    parser.add_argument("--sampling-short-s", type=float, default=10.0, help="256 prompts x 8 samples, x_short")
    parser.add_argument("--sampling-4k-s", type=float, default=45.0, help="256 prompts x 8 samples, 4K contexts")
    parser.add_argument("--eval-4k-s", type=float, default=10.0, help="480 greedy answers on 4K contexts")
    args = parser.parse_args()
    jobs = with_lengths(study_jobs(ablation_algos=tuple(args.ablation_algos.split(","))), "b",
                        regime_b(args.regime_b_length))
    first, r, cache = leaders(jobs), rates(args), {}
    totals: dict[str, float] = {}
    by_group: dict[str, list[float]] = {}
    for job in jobs:
        s = cache.setdefault(job.regime, sizes(job))
        parts = job_seconds(job, first[job.sampling_key] is job, s, r)
        for name, seconds in parts.items():
            totals[name] = totals.get(name, 0.0) + seconds
        group = f"{job.regime} {'ablation' if job.row in RA_ROWS and job.alpha != {'dpo': 3.0}.get(job.algo, 1.0) or job.row == 'solopo_both' or job.distance != 'abs' else job.row}"
        by_group.setdefault(group, []).append(sum(parts.values()))
    print(f"{len(jobs)} jobs; GPU seconds per job (mean, max) and in all, by regime and row:")
    for group, values in sorted(by_group.items()):
        print(f"  {group:<22} {len(values):>3} jobs  {sum(values) / len(values):6.1f}  {max(values):6.1f}  "
              f"{sum(values):7.0f}")
    busy = sum(totals.values())
    wall = busy / UTILISATION
    parts = math.ceil(wall / (PART_S - PART_OVERHEAD_S))
    print("GPU seconds by stage: " + ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))
    print(f"total GPU-busy {busy / 60:.1f} min; at {UTILISATION:.0%} utilisation {wall / 60:.1f} min of jobs = "
          f"{parts} parts of {PART_S // 60} min ({parts * PART_S / 60:.0f} min of H200 with each part's set-up)")


if __name__ == "__main__":
    main()
