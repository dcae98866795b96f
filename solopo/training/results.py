"""results.json: what a run did, in one file per run directory, or failed.json where it could not go on (the record a
report lists in its tables, as a study's job launcher writes one); what a run must never write (secrets) or where it
must never write (outside its sweep directory, a directory it cannot write to)."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import solopo
from solopo.cache import atomic_write_text
from solopo.preflight import SECRET_KEY

if TYPE_CHECKING:  # not imported at run time: --help imports this module, and should not import Lightning
    import pytorch_lightning as pl

log = logging.getLogger("solopo")
FAILED = "failed.json"  # a run directory's record of a run that could not go on
# The run directories of the sweep's jobs that failed or were stopped by their faults, in this process: the sweep
# goes on past each, and ends with a status that says so (solopo.run.entry; here, not beside the training code, so
# that --help does not import Lightning)
SWEEP_FAILURES: list[Path] = []


@contextlib.contextmanager
def sweep_failures_reported() -> Iterator[None]:
    """An entry point's Hydra call (solopo-train, solopo-eval): once every job of a sweep has run, a status that says
    which failed or were stopped (their failed.json; a report lists them)."""
    SWEEP_FAILURES.clear()
    yield
    if SWEEP_FAILURES:  # every job ran; the status says that some did not complete
        raise SystemExit(f"error: {len(SWEEP_FAILURES)} job(s) of the sweep failed or were stopped: "
                         f"{', '.join(str(path) for path in SWEEP_FAILURES)} (python -m solopo.report lists them)")


INTERRUPTED, PREEMPTED = "interrupted", "preempted"  # unfinished()'s reasons for a run stopped with its state saved
RESUMABLE = (INTERRUPTED, PREEMPTED)


def unfinished(results: dict) -> dict | None:
    """The failure record of a results.json whose run did not end as planned: stopped after too many non-finite steps
    in a row (faults.stopped: the run wrote what it had, then exited 1), or preempted (its state saved for a resume;
    "interrupted" where the signal was Ctrl-C's); None for a run that ended. Its scores are not the planned run's, so
    no table counts them."""
    stopped = (results.get("faults") or {}).get("stopped")
    if stopped:
        return {"reason": "non-finite steps", "detail": stopped}
    if preempted := results.get("preempted"):
        ctrl_c = isinstance(preempted, dict) and preempted.get("signal") == "SIGINT"
        return {"reason": INTERRUPTED if ctrl_c else PREEMPTED, "detail": str(preempted)}
    return None


# What results.json's timings say about training: the fit's seconds, the real tokens its steps read and their rate
# (and the "training" stage's seconds and peak memory); the rest is the run's setup and its evaluation
TRAINING_TIMINGS = ("fit_s", "train_tokens", "train_tokens_per_s")


def recorded_training(run_dir: Path, ckpt_path: Path | None, step: int) -> dict:
    """What the run in ``run_dir`` recorded of its training when it stopped at ``step`` with the checkpoint
    ``ckpt_path`` (its results.json, marked preempted): {"metrics": its train/ metrics, "timings": its
    TRAINING_TIMINGS and {"stages": {"training": ...}}}, or {} where the record is not that run's."""
    results = read_results(run_dir) if ckpt_path is not None else None
    stop = results.get("preempted") if results else None
    if not (isinstance(stop, dict) and stop.get("step") == step and isinstance(stop.get("checkpoint"), str)
            and Path(stop["checkpoint"]).resolve() == Path(ckpt_path).resolve()):  # ckpt_path=last, or named any way
        return {}
    timings = results.get("timings") or {}
    stages = {name: cost for name, cost in (timings.get("stages") or {}).items() if name == "training"}
    return {"metrics": {key: value for key, value in (results.get("metrics") or {}).items() if key.startswith("train/")},
            "timings": {**{key: timings[key] for key in TRAINING_TIMINGS if key in timings}, "stages": stages}}


def with_earlier_fits(timings: dict, earlier_fit_s: float) -> dict:
    """The timings of a run resumed mid-training with ``earlier_fit_s``, the seconds its stopped runs spent in their
    fits up to the checkpoint (callbacks.Throughput keeps them there), added to fit_s, the training stage's and
    total_s: they cover the whole training, and total_s stays the sum of model_s, data_s, fit_s and validate_s."""
    stages = timings["stages"]
    if "training" in stages:
        stages = {**stages, "training": {**stages["training"], "s": stages["training"]["s"] + earlier_fit_s}}
    return {**timings, "fit_s": timings["fit_s"] + earlier_fit_s, "total_s": timings["total_s"] + earlier_fit_s,
            "stages": stages}


def run_timings(started: float, model_done: float, data_done: float, fit_done: float, done: float, throughput,
                stages: dict) -> dict:
    """results.json's timings from the run's clock: loading the models (model_s), the data and the stages before the
    fit (data_s), the fit (fit_s), then validation, evaluation and saving (validate_s); the real tokens trained on and
    their rate (``throughput``: callbacks.Throughput) and each stage's cost (``stages``: callbacks.StageCosts.record),
    the earlier fits of a resumed run included (with_earlier_fits)."""
    timings = {"model_s": model_done - started, "data_s": data_done - model_done, "fit_s": fit_done - data_done,
               "validate_s": done - fit_done, "total_s": done - started, "train_tokens": throughput.tokens,
               "train_tokens_per_s": throughput.tokens_per_s, "stages": stages}  # tokens: real ones
    return with_earlier_fits(timings, throughput.earlier_fit_s)  # tokens: the counter holds the earlier ones


def with_recorded_training(results: dict, run_dir: Path, ckpt_path: Path | None) -> dict:
    """``results`` as the uninterrupted run would report its training. A run resumed from a checkpoint written after
    its training (preempted in its final validation or evaluation) trains no step: it reports the training figures its
    stopped run recorded (recorded_training) in place of its own, and total_s counts that fit's seconds in place of
    its own, so that it stays the sum of model_s, data_s, fit_s and validate_s. Its setup and evaluation timings are
    its own. A run that trained has gone past the recorded step, and is left as it is."""
    if not (recorded := recorded_training(run_dir, ckpt_path, results["steps"])):
        return results
    own = results["timings"]
    timings = {**own, **recorded["timings"], "stages": {**own["stages"], **recorded["timings"]["stages"]}}
    timings["total_s"] = own["total_s"] - own["fit_s"] + timings["fit_s"]
    return {**results, "metrics": dict(sorted({**results["metrics"], **recorded["metrics"]}.items())),
            "timings": timings}


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that came in a stage of the run (callbacks.StageCosts names it), for the line that ends the run."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


def record_interrupt(run_dir: Path, err: KeyboardInterrupt, config: dict, before: str, write: bool = True) -> None:
    """Ends a run that a Ctrl-C stopped where no handler of the run takes it (training's Preemption does, from the fit
    on): before training (the data, the models, sampling, the reference pass) or in solopo-eval. ``before`` says where
    that is, for a Ctrl-C outside a named stage. failed.json records it as "interrupted", which a report lists as
    "stopped: interrupted", not as a run that left no record; one line, status 130 (128 + SIGINT, as a shell reports
    a process Ctrl-C ended), in place of KeyboardInterrupt's traceback. What it left unfinished was never trusted:
    caches and records are written whole or not at all (solopo.cache.atomic_file)."""
    where = f"in its {err.stage} stage, {before}" if isinstance(err, Interrupted) else before
    line = f"interrupted (SIGINT) {where}: nothing to resume; rerun the command to start again"
    if write:
        try:
            write_failure(run_dir, RunFailed(INTERRUPTED, line), config)
        except OSError as failed:
            line = f"{line}; {failed}"
    log.warning(line)
    raise SystemExit(128 + signal.SIGINT) from None


class RunFailed(Exception):
    """A run that cannot go on because of what its data or model gave (not a mistake in its settings), e.g. sampling
    found no pair. ``reason``: a short label for a report's tables ("no pairs"); the message says why and what to
    change."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def where_it_ran(device) -> dict:
    """What a run's generated answers and timings depend on besides its config: the libraries whose kernels compute
    them, the device, and the accelerator by name (NVIDIA H200), or the CPU's architecture: two kinds of GPU can
    generate different greedy answers from the same weights (their kernels round differently)."""
    import platform

    import torch
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine() or device.type
    return {"libraries": {"torch": torch.__version__, "transformers": transformers.__version__},
            "device": str(device), "device_name": name}


def redact(value: Any) -> Any:
    """The config with every value under a secret-looking key replaced, so results never leak keys."""
    if isinstance(value, Mapping):
        return {k: "***" if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def final_metrics(callback_metrics: Mapping[str, Any]) -> dict[str, float]:
    """What was logged last under each name, as floats: for train/ losses and rewards the last epoch's means over its
    pairs (SoLoPOModule.on_train_epoch_end), for val/ the last validation's, and for step-only metrics (learning
    rate, gradient norm, memory) the last step's; train/tokens_per_s is the training's mean, the steps before a resume
    included (callbacks.Throughput)."""
    return {key: float(value) for key, value in sorted(callback_metrics.items())}


def run_record(config: dict, trainer: pl.Trainer, metrics: dict, data_counts: dict, keys: dict, plain: bool,
               ckpt_path, faults: dict, eval_curve, timings: dict) -> dict:
    """What results.json holds for a run; ``config``: its resolved config, whose secrets are redacted here."""
    return {
        "solopo_version": solopo.__version__,
        **where_it_ran(trainer.strategy.root_device),  # libraries, device, device_name: generation's kernels
        "config": redact(config),
        "metrics": metrics,
        "data": data_counts,
        "sequences": {**{split: ["/".join(key) for key in split_keys] for split, split_keys in keys.items()},
                      "plain_po": plain},  # plain PO: SoLo-RA not applicable, absent from the metrics
        "steps": trainer.global_step,
        "resumed_from": str(ckpt_path) if ckpt_path else None,  # mid-training: the train/ means cover the steps since
        "faults": faults,
        "eval_curve": eval_curve,
        "timings": timings,
    }


def read_results(run_dir: Path) -> dict | None:
    """The results.json of ``run_dir`` as written, or None where there is none or it is no whole record."""
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / "results.json"
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=True) + "\n")
    return path


def write_failure(run_dir: Path, failure: RunFailed, config: dict) -> Path:
    """failed.json: {"reason", "detail", "config"}, the fields solopo.report.runs reads (config places the run in
    its table row); the config with its secrets redacted."""
    path = Path(run_dir) / FAILED
    record = {"reason": failure.reason, "detail": str(failure), "config": redact(config)}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def all_finite(metrics: Mapping[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def summary(results: dict, path: Path) -> str:
    """The few lines printed at the end of a run: steps, pairs, sampling, the main metrics, skipped steps."""
    m, t = results["metrics"], results["timings"]
    keys = ["train/loss", "train/po_loss", "train/ra_loss", "train/rewards/accuracies", "val/loss",
            "val/rewards/accuracies", "val/rewards/margins", "val/ra/gap"]
    lines = [f"trained {results['steps']} steps on {results['data']['train']['pairs']} pairs ({results['device']}) "
             f"in {t['fit_s']:.1f}s, {t['train_tokens_per_s']:.0f} tokens/s"]
    for split, counts in results["data"].items():
        if "sampling" in counts:
            sampled = counts["sampling"]
            lines.append(f"  {split} pairs sampled on the {sampled['context']} context: {sampled['kept']} of "
                         f"{sampled['items']} questions kept, {100 * sampled['share_correct']:.1f}% of samples correct")
    lines += [f"  {k:<24} {m[k]:.4f}" for k in keys if k in m]
    if results["faults"]["skipped_steps"]:
        lines.append(f"  skipped {results['faults']['skipped_steps']} steps with a non-finite loss or gradient "
                     "(results.json: faults)")
    lines.append(f"results: {path}")
    return "\n".join(lines)
