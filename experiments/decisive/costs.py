"""The decisive study's pipeline cost: per regime, algorithm and method, the seconds and peak GPU memory of each stage
of a job (sampling the pairs, the reference pass, the base model's evaluation, training, the trained model's
evaluation) and of the whole pipeline, their sum.

Sampling, the reference pass and the base model's evaluation are shared: the first job that needs one computes it and
writes it to the cache, and the others read it. Each counts at the run that computed it, found among every run that
shares its input and read the same output (``shared_input``: a job that found a stale cache entry computed the stage
again, and the runs that read its output are charged its seconds, the others the first's), whatever that run's method
or algorithm; a method's row counts it once per seed,
as its own pipeline, run with nothing in the cache, would. The run that computed it: of the runs sharing the input,
the longest of those not recorded ``"cached": true`` (solopo.training.callbacks.StageCosts). Runs from before that
record say nothing, and the longest is still the one that computed it: a read takes milliseconds, and a job that
waited on the cache's lock for it began waiting after the computing job began.
"""
from __future__ import annotations

import json

from experiments.decisive.jobs import COST_ROWS, MAIN_ROWS, pairs_sample, place
from solopo.eval.longctx import score_rows
from solopo.report.runs import Run, stat
from solopo.report.tables import cell, markdown

STAGES = ("sampling", "reference", "base_eval", "training", "eval")
ROWS = ("short_po", "long_po", *COST_ROWS, *MAIN_ROWS[2:])  # Short-PO, Long-PO, Expand-long, SoLoPO, SoLoPO-detach
PIPELINE = "whole pipeline"


def shared_input(run: Run, stage: str) -> tuple | None:
    """What a shared stage's value was computed from besides the model; None for a stage every run computes itself.
    Sampling: the seed's questions, the context the pairs were sampled on and the sample the run trained on
    (jobs.pairs_sample); the reference pass: those pairs and the sequences it scores (e.g. short chosen and rejected
    for Short-PO, and long chosen for SoLoPO); the base model's evaluation: the seed's questions, the lengths asked
    and the table the run read (its score rows)."""
    regime, algo = place(run)[:2]
    sampled_on = run.config.get("method", {}).get("pairs_from")
    if stage == "sampling":
        return regime, run.seed, sampled_on, pairs_sample(run)
    if stage == "reference":
        return regime, run.seed, algo, sampled_on, pairs_sample(run), tuple(run.sequences.get("train", ()))
    if stage == "base_eval":
        scores = json.dumps(score_rows(run.eval.get("base", {})))  # rows, whichever way the table stores them
        return regime, run.seed, json.dumps(run.config.get("eval", {}).get("lengths")), scores
    return None


def computed(runs: list[Run]) -> dict[tuple, dict]:
    """(stage, its input) -> {"s", "peak_gib"} of the run that computed it: the longest not recorded cached."""
    found: dict[tuple, dict] = {}
    for run in runs:
        for stage, cost in run.timings.get("stages", {}).items():
            key = (stage, shared_input(run, stage))
            if key[1] is not None and not cost.get("cached") and cost["s"] > found.get(key, {"s": -1.0})["s"]:
                found[key] = cost
    return found


def seed_costs(run: Run, found: dict[tuple, dict]) -> dict[str, dict | None]:
    """Each stage of one run: its own cost, or a shared stage's where it was computed (None: that run is missing)."""
    return {stage: cost if shared_input(run, stage) is None else found.get((stage, shared_input(run, stage)))
            for stage, cost in run.timings.get("stages", {}).items()}


def with_pipeline(costs: dict[str, dict | None]) -> dict[str, dict | None]:
    """The stages and the whole pipeline: their seconds summed, the largest peak (None when a stage is unknown)."""
    known = list(costs.values())
    whole = None if None in known or not known else {"s": sum(c["s"] for c in known),
                                                     "peak_gib": max(c["peak_gib"] for c in known)}
    return {**costs, PIPELINE: whole}


def cost_cell(costs: list[dict | None]) -> str:
    """"mean ± std s, peak GiB" over the seeds (peak: the largest); "-" where no seed ran the stage."""
    known = [c for c in costs if c is not None]
    if not known:
        return "-"
    return f"{cell(stat(c['s'] for c in known), 1)} s, {max(c['peak_gib'] for c in known):.1f} GiB"


def at_once(runs: list[Run]) -> int | None:
    """The most jobs that ran at the same time, from the studies' runner's job.json (start: ended_at - seconds);
    None when no run has one."""
    events = []
    for path in {run.path / "job.json" for run in runs}:  # a base row is a copy of the run that evaluated it
        if path.exists():
            job = json.loads(path.read_text())
            events += [(job["ended_at"] - job["seconds"], 1), (job["ended_at"], -1)]
    running, most = 0, None
    for _, change in sorted(events):  # at one instant an end comes before a start
        running += change
        most = max(most or 0, running)
    return most


def caption(runs: list[Run]) -> str:
    """How the seconds were measured: how many jobs shared the GPU, and where the shared stages count."""
    n = at_once(runs)
    if n == 1:
        shared = "one at a time"
    else:
        shared = "several at a time on one GPU (how many is not recorded)" if n is None else \
            f"up to {n} at a time on one GPU (from the jobs' start and end times)"
        shared += ", so a stage's seconds include the GPU time other jobs held"
    return (f"Seconds (mean ± std over seeds) and peak GPU memory (the largest over seeds) of each stage of a job, as "
            f"run: the jobs ran {shared}. Sampling, the reference pass and the base model's evaluation count at the "
            f"run that computed them, for every method that needs them; the {PIPELINE}: the sum of the stages, a "
            "method's job of one seed with nothing in the cache.")


def cost_table(groups: dict, key_of) -> list[str]:
    """The caption and one row per regime, algorithm and method that ran (``key_of(regime, algo, row)``: its group):
    each stage and the whole pipeline."""
    runs = [r for rs in groups.values() for r in rs if not r.failed]
    found, rows = computed(runs), []
    for regime, algo in sorted({(k[0], k[1]) for k in groups if k[1] != "-"}):
        for row in ROWS:
            ok = [r for r in groups.get(key_of(regime, algo, row), []) if not r.failed]
            per_seed = [with_pipeline(seed_costs(r, found)) for r in ok if r.timings.get("stages")]
            if per_seed:
                rows.append([regime, algo, row, str(len(per_seed)),
                             *(cost_cell([s.get(stage) for s in per_seed]) for stage in (*STAGES, PIPELINE))])
    if not rows:
        return ["No run recorded its stages."]
    return [caption(runs), "", *markdown(["regime", "algo", "method", "seeds", *STAGES, PIPELINE], rows)]
