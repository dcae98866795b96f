"""The Lightning side of a training run: its logger, its Trainer with solopo's callbacks, the fit, and how a run ends
(results written on one process, a preempted run's exit status, a faulty run's message, a failed run's record). solopo.training.pipeline
calls these with the run's config and settings."""
from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import warnings
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from solopo.cache import failed_write
from solopo.eval.runner import RunEvaluation
from solopo.preflight import stop
from solopo.settings.build import Settings, trainer_arguments
from solopo.training.callbacks import Preemption, Throughput
from solopo.training.distributed import check_strategy
from solopo.training.faults import NumericalGuard
from solopo.training.loggers import ProgressLines, ResumableCSVLogger, finish, on_terminal, wandb_labels
from solopo.training.module import SoLoPOModule, intended_warnings_silenced
from solopo.training.results import (FAILED, SWEEP_FAILURES, RunFailed, all_finite, record_interrupt, redact,
                                     summary, write_failure, write_results)
from solopo.training.resume import LastCheckpoint, LoaderPosition, RngState
from solopo.training.run_settings import SettingsInCheckpoint, trained_settings

log = logging.getLogger("solopo")


def make_logger(cfg: DictConfig, alpha: float, resume: bool):
    """The experiment logger (conf/logger), or False; wandb and CSV get the same tags, and continue on resume. A dry
    run (trainer.fast_dev_run, debug=fast) gets none: Lightning would swap it for a stand-in that records nothing."""
    if not (cfg.get("logger") and "_target_" in cfg.logger):
        return False
    if cfg.trainer.get("fast_dev_run"):
        log.info("trainer.fast_dev_run: a dry run, logged to no experiment logger")
        return False
    hydra_cfg = HydraConfig.get()
    labels = wandb_labels(hydra_cfg.runtime.choices, alpha,
                          hydra_cfg.mode == RunMode.MULTIRUN, hydra_cfg.sweep.dir, hydra_cfg.job.override_dirname,
                          group=cfg.logger.get("group"), name=cfg.logger.get("name"), tags=cfg.logger.get("tags") or ())
    extra = {}
    if "wandb" in cfg.logger._target_:
        extra = {**labels, "resume": resume}
    elif cfg.logger._target_ == f"{ResumableCSVLogger.__module__}.{ResumableCSVLogger.__qualname__}":
        extra = {"tags": labels["tags"], "resume": resume}
    logger = instantiate(cfg.logger, **extra)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(redact(OmegaConf.to_container(cfg, resolve=True)))
    return logger


def strategy_of(cfg: DictConfig) -> str:
    """The trainer's strategy: a class path (trainer=fsdp, deepspeed) or Lightning's name ("auto", "ddp")."""
    return str(OmegaConf.select(cfg, "trainer.strategy._target_", default=cfg.trainer.get("strategy", "")))


def make_trainer(cfg: DictConfig, settings: Settings, run_dir: Path, callbacks: list, resume: bool) -> pl.Trainer:
    # build_settings checked the accelerator at startup; a strategy is checked against the machine here
    check_strategy(strategy_of(cfg), cfg.trainer.accelerator)
    overrides = {"precision": settings.precision, "default_root_dir": str(run_dir),
                 # the loaders shard each global batch across processes themselves (solopo.training.resume.EpochOrder)
                 "use_distributed_sampler": False}
    if cfg.val_every_n_steps:
        overrides.update(val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None)
    if cfg.trainer.enable_checkpointing:
        callbacks = [*callbacks, LastCheckpoint(run_dir, **cfg.checkpoint), SettingsInCheckpoint(trained_settings(cfg))]
    if cfg.trainer.get("enable_progress_bar", True):
        if on_terminal():
            callbacks = [*callbacks, TQDMProgressBar()]  # tqdm's: Lightning picks rich's bar where rich is installed
        else:  # a log file (run.log, SLURM, CI) gets plain lines, not a bar's redraws
            callbacks, overrides["enable_progress_bar"] = [*callbacks, ProgressLines()], False
    return instantiate(trainer_arguments(cfg), logger=make_logger(cfg, settings.ra.alpha, resume), callbacks=callbacks,
                       **overrides)


def fit(cfg: DictConfig, settings: Settings, run_dir: Path, ckpt_path, module: SoLoPOModule, loaders: dict,
        preemption: Preemption, started: float, extra: tuple = ()):
    """Trains; returns the trainer and the callbacks whose records go into results.json. ``started``: when the fit's
    seconds (results.json's fit_s) began, a time.perf_counter() reading."""
    throughput, guard = Throughput(started), NumericalGuard(cfg.faults.max_consecutive_bad_steps)
    callbacks = [throughput, guard, preemption, RngState(), LoaderPosition(loaders["train"]), *extra]
    trainer = make_trainer(cfg, settings, run_dir, callbacks, resume=ckpt_path is not None)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    # Without val_every_n_steps, validation runs once, after training (after_fit): Lightning's note on a
    # validation_step without a val_dataloader does not apply to this fit.
    with intended_warnings_silenced(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
        # Lightning looks for the loader's position in the loader itself; LoaderPosition restores it.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(module, train_dataloaders=loaders["train"],
                    val_dataloaders=loaders["val"] if cfg.val_every_n_steps else None, ckpt_path=ckpt_path,
                    weights_only=True)
    return trainer, throughput, guard


def finish_run(trainer: pl.Trainer, run_dir: Path, results: dict, evaluation: RunEvaluation | None, tables: dict,
               preemption: Preemption, guard: NumericalGuard) -> dict:
    """One process writes results and plots, then removes the checkpoint a completed run no longer needs, and prints
    the summary; a preempted or faulty run exits here, and so does a run that a signal reached after training but let
    finish (several processes), once its results are written."""
    metrics = results["metrics"]
    if preemption.stopped is not None and hasattr(trainer.checkpoint_callback, "save_now"):
        trainer.checkpoint_callback.save_now(trainer)  # every process; stopped in training, it is written already
    if not trainer.is_global_zero:
        if preemption.received is not None:
            raise SystemExit(128 + preemption.received.value)
        return results
    if preemption.stopped is not None:
        stop_preempted(preemption, trainer, run_dir, results)
    if tables:
        outputs = evaluation.outputs(tables, run_dir, results["eval_curve"])
        results.update({evaluation.results_key: tables, "eval_summary": evaluation.summary(tables),
                        "eval_changes": outputs["changes"], "plots": outputs["plots"]})
        evaluation.log(trainer.logger, tables, outputs["plots"])
        print(f"{evaluation.heading}:\n" + outputs["markdown"])
    path = write_results(run_dir, results)
    if hasattr(trainer.checkpoint_callback, "remove_if_completed"):  # not before: a stop until here resumes from it
        trainer.checkpoint_callback.remove_if_completed(trainer)
    if not all_finite(metrics):
        log.warning("some final metrics are not finite: %s", {k: v for k, v in metrics.items() if v != v or abs(v) == float("inf")})
    print(summary(results, path))
    finish(trainer.logger)  # the next job of a sweep starts its own wandb run
    if guard.stop_message:
        stop_on_faults(guard.stop_message)
    if preemption.received is not None:  # it came once the run could finish: the process stops as it was asked
        raise SystemExit(128 + preemption.received.value)
    return results


def stop_preempted(preemption: Preemption, trainer: pl.Trainer, run_dir: Path, results: dict) -> None:
    """Records the stop in results.json (``preempted``, after_training: whether training had completed) and exits with
    128 + the signal number (143 for SIGTERM, 138 for SIGUSR1, 130 for Ctrl-C), as a shell reports a process the
    signal ended, so a job script sees that the run did not finish."""
    received, after_training = preemption.received, preemption.stopped == "after training"
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    results["preempted"] = {"signal": received.name, "step": trainer.global_step, "checkpoint": checkpoint or None,
                            "after_training": after_training}
    write_results(run_dir, results)
    what = (f"{'interrupted' if received == signal.SIGINT else 'preempted'} ({received.name}) at step "
            f"{trainer.global_step}{', after training' if after_training else ''}")
    if checkpoint:
        log.warning("%s: checkpoint written to %s; %s", what, checkpoint, resume_hint(run_dir))
    else:
        log.warning("%s: no checkpoint written (trainer.enable_checkpointing=false)", what)
    raise SystemExit(128 + received.value)


def resume_hint(run_dir: Path) -> str:
    """How to resume, in words a shell and Hydra's override grammar both take as they are pasted. A job of a sweep
    resumes when the sweep is rerun in its directory (its checkpoint is found there; the jobs without one start
    fresh); a job's own directory, named after its overrides ('0_algo=dpo,logger=csv'), would not parse unquoted."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = HydraConfig.get().sweep.dir
        return f"resume by rerunning the sweep with {override('hydra.sweep.dir', sweep_dir)} ckpt_path=last"
    return f"resume by rerunning the command with ckpt_path=last {override('hydra.run.dir', run_dir)}"


def override(key: str, value) -> str:
    """``key=value`` for a command line: the value in Hydra's quotes where its grammar would not read it back as it is
    ('=', ',', '~'), the whole in the shell's quotes where the shell would change it (a space, a quote)."""
    value = str(value)
    try:
        plain = OverridesParser.create().parse_override(f"{key}={value}").value() == value
    except HydraException:  # its grammar reads no value at all
        plain = False
    quoted = value if plain else '"' + value.replace('"', '\\"') + '"'
    return shlex.quote(f"{key}={quoted}")


def stop_on_faults(message: str) -> None:
    """A single run exits with status 1 and the message; a job of a sweep logs it (results.json has it under
    faults.stopped) and lets the sweep go on."""
    if not in_sweep(Path(HydraConfig.get().runtime.output_dir)):
        raise SystemExit(message)
    log.error(message)


@contextlib.contextmanager
def failure_recorded(cfg: DictConfig):
    """A run's body: a RunFailed (e.g. no pairs), or a file the run could not write (results.json, a checkpoint, a
    plot on a full disk: solopo.cache.failed_write), leaves failed.json in the run directory, written by one process,
    so a report lists the run and why, and ends the process like a bad setting: its one ``error:`` line, status 2; a
    Ctrl-C before training ends it in one line too, status 130 (results.record_interrupt). An
    earlier attempt's failed.json in the same directory (a rerun, a resume, a requeued job) is removed as the run
    begins: it describes a run that is no longer the directory's."""
    if rank_zero_only.rank == 0:
        (Path(HydraConfig.get().runtime.output_dir) / FAILED).unlink(missing_ok=True)
    try:
        yield
    except RunFailed as failure:
        record_failure(cfg, failure)
    except KeyboardInterrupt as err:  # from the fit on, Preemption takes Ctrl-C: this one came before training
        record_interrupt(Path(HydraConfig.get().runtime.output_dir), err, OmegaConf.to_container(cfg, resolve=True),
                         "before training", write=rank_zero_only.rank == 0)
    except Exception as err:
        write = failed_write(err)
        if write is None:
            raise
        record_failure(cfg, RunFailed("write failed", str(write)))


def record_failure(cfg: DictConfig, failure: RunFailed) -> None:
    """failed.json (by one process; on a full disk it may not be written either, which the line then says), then a
    single run stops with the failure's line; a job of a sweep logs it, and the sweep goes on to the next job."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    line = str(failure)
    if rank_zero_only.rank == 0:
        try:
            write_failure(run_dir, failure, OmegaConf.to_container(cfg, resolve=True))
        except OSError as err:
            line = f"{line}; {err}"
    if not in_sweep(run_dir):
        stop(line)
    log.error("%s (%s); the sweep goes on", line, run_dir / FAILED)


def in_sweep(run_dir: Path) -> bool:
    """Whether the run that did not complete is a job of a sweep (-m), which then lists it among the sweep's failures
    (the sweep goes on and its status says so); a single run stops instead."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    SWEEP_FAILURES.append(run_dir)
    return True
