"""How much GPU time the decisive study needs at measured rates, and the parts of at most 9 minutes it runs in.

    python experiments/decisive/estimate.py                       # the plan: each part, then the total
    python experiments/decisive/estimate.py --regime-b-length 768 --speed /tmp/decisive/speed/speed.json

Each job's work (prompts sampled, answers evaluated, tokens trained, reference tokens) comes from the presets
(conf/experiment/decisive/ and the job's overrides) and turns into seconds of a busy GPU with measured rates:
- generation, experiments/sampling/results/speed.json (the budget path, the one the presets take): W1 480 greedy
  answers on 4K contexts, W2 256 questions x 8 samples on x_short, W3 the same on 4K; linear in the prompt's length
  between x_short and 4K (prefill's attention grows faster than that: the shorter lengths are over-counted). A greedy
  answer on x_short costs one of W2's sequences. The answers are counted at W1's 32 new tokens, although the presets
  allow 16: speed.py does not separate decoding from prefill, so that saving is not claimed;
- training, experiments/efficiency/results/solopo_grid_defaults.json (SmolLM2, SoLoPO, 4K, every layer checkpointed
  as the presets do): the step's time x the share of it the GPU was busy, per token.
Concurrency: the jobs of a part share one GPU. Prefill is compute-bound, so a generation's seconds, measured alone on
the GPU, count whole: running jobs side by side buys nothing there. A training step of the 135M model keeps the GPU
busy a fifth of its time (kernel launches), so jobs side by side fill those gaps: training counts its busy share only.
A part's jobs take their busy seconds / UTILISATION, plus the part's own set-up, within PART_S.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.decisive.curve import CANDIDATES, DEFAULT_LENGTH  # noqa: E402
from experiments.decisive.curve import overrides as regime_b  # noqa: E402
from experiments.decisive.jobs import Job, study_jobs, units, with_lengths  # noqa: E402
from experiments.studies.runner import leaders  # noqa: E402
from solopo.eval.longctx import length_fits  # noqa: E402

SPEED = ROOT / "experiments" / "sampling" / "results" / "speed.json"
BENCH = ROOT / "experiments" / "efficiency" / "results" / "solopo_grid_defaults.json"
TEMPLATE = 40  # chat template and question tokens around a context
EVIDENCE = 110  # x_short when it is the evidence alone
STEP_FLOOR_S = 0.015  # busy GPU of a step however short its sequences (~3,600 kernels of forward, recompute, backward)
REFERENCE_SPEED_UP = 3  # DPO's reference log-probs: a forward alone, against training's forward, recompute, backward
UTILISATION = 0.85  # busy share of the GPU over a part (jobs starting at its beginning, the last ones ending)
PART_S = 540  # one resumable part: at most 9 minutes of device time
PART_OVERHEAD_S = 60  # per part: set-up, the report and the archive (run.sh keeps 60 s for them)


@dataclass(frozen=True)
class Rates:
    """Seconds per item at x_short (EVIDENCE tokens) and at 4K, and training's busy tokens per second."""

    gpu: str
    answer: tuple[float, float]  # one greedy answer
    sample: tuple[float, float]  # one prompt's k samples
    train_tokens_per_s: float  # busy GPU
    train_busy: float  # the share of a step's time the GPU was busy, when the job runs alone

    def per_item(self, kind: str, tokens: int) -> float:
        """Linear in the prompt's length between the two measured points."""
        short, long = getattr(self, kind)
        return short + (long - short) * (tokens - EVIDENCE - TEMPLATE) / (4096 - EVIDENCE)


def measured_rates(speed: Path = SPEED, bench: Path = BENCH) -> Rates:
    """The budget path's W1, W2, W3 (speed.json) and the checkpointed SoLoPO step at 4K (the efficiency bench)."""
    data = json.loads(speed.read_text())
    seconds = {r["workload"]: r["seconds"] / r["prompts"] for r in data["rows"] if r["path"] == "budget"}
    k = data["meta"].get("k", 8)
    step = next(r for r in json.loads(bench.read_text())["rows"] if (r["model"], r["method"], r["long_len"],
                r["checkpointed_layers"], r["status"]) == ("smollm2", "solopo", 4096, 30, "ok"))
    return Rates(gpu=data["meta"]["device"], answer=(seconds["W2"] / k, seconds["W1"]),
                 sample=(seconds["W2"], seconds["W3"]),
                 train_tokens_per_s=step["tokens"] / (step["step_s"] * step["gpu_busy"]), train_busy=step["gpu_busy"])


def sizes(job: Job) -> dict:
    """What the job's composed config asks for: token lengths, steps, items and its evaluation's cases."""
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=job.overrides())
    lengths = [n for n in OmegaConf.to_container(cfg.eval.lengths, resolve=True) if n != "short"]
    return {"long": cfg.data.long_len + TEMPLATE, "short": (cfg.data.short_len or EVIDENCE) + TEMPLATE,
            "steps": cfg.trainer.max_steps, "batch": cfg.data.batch_size,
            "items": cfg.data.source.n_train + cfg.data.source.n_val, "eval_items": cfg.eval.n_items,
            "lengths": tuple(int(n) for n in lengths if length_fits(int(n), cfg.model.max_length)),
            "depths": len(cfg.eval.depths)}


def evaluation_s(s: dict, r: Rates, lengths: tuple[int, ...] | None = None) -> float:
    """One evaluation: the evidence alone, then every length at every depth, for each question."""
    cases = [EVIDENCE + TEMPLATE] + [n + TEMPLATE for n in (lengths or s["lengths"])] * s["depths"]
    return s["eval_items"] * sum(r.per_item("answer", n) for n in cases)


def job_seconds(job: Job, s: dict, r: Rates, leader: bool, evaluates_base: bool) -> dict[str, float]:
    """Busy GPU seconds per stage. Per pair: 2 sequences for Short-PO, Long-PO and Expand-long (on the context they
    train on), 2 short + 1 long for SoLoPO chosen-only, 2 + 2 for both responses; a step holds data.batch_size
    pairs."""
    context = s["long"] if job.sampling_key[-1] == "long" else s["short"]
    per_pair = {"short_po": [s["short"]] * 2, "long_po": [s["long"]] * 2, "expand_long": [s["long"]] * 2,
                "solopo_both": [s["short"]] * 2 + [s["long"]] * 2}.get(job.row, [s["short"]] * 2 + [s["long"]])
    tokens = s["steps"] * s["batch"] * sum(per_pair)
    return {"sampling": s["items"] * r.per_item("sample", context) if leader else 0.0,
            "reference": tokens / r.train_tokens_per_s / REFERENCE_SPEED_UP if job.algo == "dpo" else 0.0,
            "base_eval": evaluation_s(s, r) if evaluates_base else 0.0,
            "training": max(tokens / r.train_tokens_per_s, s["steps"] * STEP_FLOOR_S),
            "eval": evaluation_s(s, r)}


def costs(jobs: list[Job], r: Rates) -> dict[Job, dict[str, float]]:
    """Each job's stages; the base model's evaluation counts once per seed and evaluation (the cache shares it, across
    regimes too where their questions and lengths agree), in the first job that asks for it."""
    first, found, seen, out = leaders(jobs), {}, set(), {}
    for job in jobs:
        key = (job.regime, job.every_length, job.lengths)  # what the sizes depend on
        if key not in found:
            found[key] = sizes(job)
        s = found[key]
        base = (job.seed, s["lengths"], s["eval_items"])
        out[job] = job_seconds(job, s, r, first[job.sampling_key] is job, base not in seen)
        seen.add(base)
    return out


def parts(jobs: list[Job], seconds: dict[Job, float], first_part_extra_s: float = 0.0) -> list[list[Job]]:
    """The jobs in parts of whole units (jobs.units): each unit, in the study's order, goes to the first part whose
    busy seconds, over UTILISATION, still fit PART_S less its set-up (the first part also measures the curve), and
    which is not before the part of the job that samples its pairs. Small units thus fill what larger ones leave of a
    part, and a part never waits for pairs of a later one. A unit larger than a part gets a part of its own (the
    runner stops what is left of it at the deadline, and the next part runs it)."""
    room = PART_S - PART_OVERHEAD_S
    out: list[list[Job]] = []
    used: list[float] = []
    home: dict[tuple, int] = {}  # sampling key -> the part of its first job
    for unit in units(jobs):
        need = sum(seconds[j] for j in unit) / UTILISATION
        earliest = max((home[j.sampling_key] for j in unit if j.sampling_key in home), default=0)
        n = next((i for i in range(earliest, len(out)) if used[i] + need <= room), len(out))
        if n == len(out):
            out.append([])
            used.append(first_part_extra_s if n == 0 else 0.0)
        out[n] += unit
        used[n] += need
        for job in unit:
            home.setdefault(job.sampling_key, n)
    return out


def curve_s(r: Rates, n_items: int = 200, depths: int = 3) -> float:
    """curve.py's evaluation of the base model at every candidate length (seed 1000's questions)."""
    s = {"eval_items": n_items, "depths": depths, "lengths": CANDIDATES}
    return evaluation_s(s, r)


def in_parts(jobs: list[Job], rates: Rates | None = None) -> tuple[list[list[Job]], dict[Job, dict[str, float]]]:
    """The jobs in the parts the launcher runs them in (its --part), and each job's busy seconds by stage."""
    r = rates or measured_rates()
    stages = costs(jobs, r)
    return parts(jobs, {j: sum(v.values()) for j, v in stages.items()}, curve_s(r) / UTILISATION), stages


def describe(part: list[Job]) -> str:
    """A part's units in short: "a s0 dpo, simpo, expand_long simpo; a s1 ablation simpo abs, simpo abs detach"."""
    seen: dict[tuple, list[str]] = {}
    for job in part:
        names = seen.setdefault((job.regime, job.seed, job.every_length), [])
        names += [] if job.label in names else [job.label]
    return "; ".join(f"{regime} s{seed}{'' if every else ' ablation'} {', '.join(names)}"
                     for (regime, seed, every), names in seen.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime-b-length", type=int, default=DEFAULT_LENGTH, help="x_long of regime (b) (curve.py's "
                        "choice)")
    parser.add_argument("--ablation-algos", default="simpo")
    parser.add_argument("--speed", type=Path, default=SPEED, help="speed.py's speed.json (the budget path's rows)")
    args = parser.parse_args()
    r = measured_rates(args.speed)
    jobs = with_lengths(study_jobs(ablation_algos=tuple(args.ablation_algos.split(","))), "b",
                        regime_b(args.regime_b_length))
    split, stages = in_parts(jobs, r)
    print(f"rates ({r.gpu}): greedy answer {1e3 * r.answer[0]:.1f} ms on x_short, {1e3 * r.answer[1]:.1f} ms at 4K; "
          f"8 samples {1e3 * r.sample[0]:.1f} ms on x_short, {1e3 * r.sample[1]:.0f} ms at 4K; training "
          f"{r.train_tokens_per_s / 1e3:.0f}K tokens per busy second (busy {r.train_busy:.0%} of a step alone)")
    busy = lambda part: sum(sum(stages[j].values()) for j in part)  # noqa: E731
    curve = curve_s(r)
    for n, part in enumerate(split, 1):
        extra = curve if n == 1 else 0.0
        wall = (busy(part) + extra) / UTILISATION + PART_OVERHEAD_S
        print(f"part {n:>2}: {len(part):>2} jobs, {(busy(part) + extra) / 60:4.1f} min busy, ~{wall / 60:4.1f} min "
              f"with set-up: {'the curve, ' if n == 1 else ''}{describe(part)}")
    totals = {k: sum(stages[j][k] for j in jobs) for k in next(iter(stages.values()))}
    alone = sum(totals.values()) + totals["training"] * (1 / r.train_busy - 1) + curve
    total = sum(totals.values()) + curve
    print(f"{len(jobs)} jobs; busy GPU minutes by stage: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in totals.items())
          + f", curve {curve / 60:.1f}")
    print(f"total {total / 60:.1f} min of busy GPU ({alone / 60:.1f} min one job at a time: concurrency buys only "
          f"training's idle gaps); {len(split)} parts of at most {PART_S // 60} min = {len(split) * PART_S / 60:.0f} "
          f"min of device time on {r.gpu}, before each session's machine start")


if __name__ == "__main__":
    main()
