"""Experiment loggers that need more than their Lightning class: wandb that runs offline without a key, and both
loggers continuing where an interrupted run left off when it is resumed (ckpt_path=...); what the libraries print,
kept to what a user can act on (quiet_libraries), plain progress lines where no terminal shows a bar, and the run's log
file, whose failed write stops the run (RunLog)."""
from __future__ import annotations

import contextlib
import csv
import logging
import netrc
import os
import re
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Optional, Sequence

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from solopo.cache import WriteFailed, stop_on_failed_writes, writing
from solopo.progress import duration

log = logging.getLogger(__name__)
WANDB_RUN_ID_FILE = "wandb_run_id"
WANDB_MODES = ("auto", "online", "offline")  # logger.mode; auto: online when an API key is configured
# What wandb itself takes in the WANDB_MODE environment variable (it refuses anything else, an empty value too)
WANDB_ENV_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")
# Config groups a run is tagged with; experiment and debug only where chosen: a preset run (experiment=smoke, or a
# study's preset) is told apart from a run configured by hand.
TAGGED_GROUPS = ("algo", "ra", "method", "data", "model", "experiment", "debug")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Lightning's lines that no setting of a solopo run changes: an advertisement, and a note that the schedule counts
# the batches of the training loader (it always does: the warm-up and cosine span them)
_LIGHTNING_NOISE = re.compile(r"💡 Tip: |Loading `train_dataloader` to estimate number of stepping batches")


def on_terminal() -> bool:
    """Whether progress bars have a terminal to redraw on; where output goes to a file (run.log, a SLURM log, CI),
    each redraw of a bar would be one more piece of a line thousands of characters long."""
    return sys.stderr.isatty()


def quiet_libraries() -> None:
    """Keeps what Lightning and its dependencies print to what a user can act on: no advertisement, no deprecation
    notes about the libraries' calls into each other, and off a terminal no progress bars of the libraries (e.g.
    loading a model's weights); solopo's own bars pass disable=None, and ProgressLines logs the training's progress.
    A run over several processes reads as one run: the others log warnings and errors only (rank_zero_voice)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_not_noise)  # added once however often called
    rank_zero_voice(rank_zero_only.rank)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning's call into torch
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated")  # peft's, on LoRA runs
    if not on_terminal():
        os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported (by worker processes); a user's wins
    if os.environ.get("TQDM_DISABLE") == "1":  # transformers' bars (loading a model's weights) have their own switch
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _not_noise(record: logging.LogRecord) -> bool:
    return not _LIGHTNING_NOISE.match(record.getMessage())


def warning_or_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def rank_zero_voice(rank: int) -> None:
    """On a process other than the first (rank > 0: FSDP, DDP, context parallelism), every handler of the root logger
    (Hydra's console and run.log) passes warnings and errors only, so each INFO and progress line is written once,
    by rank 0, and a problem of one process still shows. Lightning's launcher starts the other processes with their
    rank in the environment, which rank_zero_only.rank reads when Lightning is imported."""
    if rank == 0:
        return
    for handler in logging.getLogger().handlers:
        if warning_or_worse not in handler.filters:  # added once however often called
            handler.addFilter(warning_or_worse)


class RunLog(logging.FileHandler):
    """The run's log file, <run dir>/run.log (evaluate.log for solopo-eval; conf/hydra/job_logging/solopo.yaml).

    A write of it that fails (a full disk) is fatal, as every failed write of a run is (solopo.cache's
    stop_on_failed_writes, lightning_run.failure_recorded), rather than a run that goes on without its log: on a full
    disk its checkpoint and results.json would fail next, and logging's own report is a "--- Logging error ---"
    traceback on stderr for every line. The first failed line raises a WriteFailed naming the file from the call that
    logged it, which ends the run in one line, status 2 (failed.json where the disk takes it; a job of a sweep: the
    sweep goes on). The lines after it reach the console only: the run's teardown logs too. A forked process (a
    DataLoader worker) or another thread cannot end the run: it drops its line, and the main thread stops the run at
    its own next line, which the full disk refuses too."""

    def __init__(self, filename: str, *args, **kwargs):
        self.failed, self.owner = False, os.getpid()
        # opened by Hydra before the task function runs, where Hydra would report a failure with a traceback
        with stop_on_failed_writes(), writing(Path(filename)):
            super().__init__(filename, *args, **kwargs)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):  # a record that cannot be formatted: logging's own report
            super().handleError(record)
        elif os.getpid() == self.owner and threading.current_thread() is threading.main_thread():
            self.failed = True
            with contextlib.suppress(OSError):  # closed with the line it holds unwritten: each flush would fail
                self.close()
            raise WriteFailed.of(self.baseFilename, err) from err


class ProgressLines(Callback):
    """The training's progress as one log line every ``every`` optimizer steps, or after ``every_s`` seconds without
    one (slow steps), and at the last: the step, the steps in all, the loss, the steps per second since the previous
    line and the time left at that rate; a progress bar's plain form for log files."""

    def __init__(self, every: int = 10, every_s: float = 30.0):
        self.every, self.every_s, self._last = every, every_s, None

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.perf_counter()
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        if step == self._last[0] or (step % self.every and step < total and now - self._last[1] < self.every_s):
            return
        rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        log.info("step %d/%d: loss %s, %.2f steps/s, %s left", step, total,
                 "-" if loss is None else f"{float(loss):.4f}", rate, duration(max(total - step, 0) / rate))
        self._last = (step, now)


def wandb_labels(choices: dict[str, str], alpha: float, multirun: bool, sweep_dir: str = "", override_dirname: str = "",
                 group: Optional[str] = None, name: Optional[str] = None, tags: Sequence[str] = ()) -> dict:
    """Tags, group and name of a run on a wandb dashboard. Tags: each config choice (algo=dpo, ...) and the
    SoLo-RA weight in use (alpha=1), to filter and colour runs by, then the config's own (+logger.tags=[a,b]).
    The jobs of a sweep share a group named after the sweep directory, and each job is named by its overrides
    (algo=dpo,ra.alpha=1), so a sweep is one group of runs told apart at a glance. A group or name set in the
    config (logger.group=...) wins."""
    chosen = [f"{key}={choices[key]}" for key in TAGGED_GROUPS if choices.get(key) not in (None, "null")]
    tags = list(dict.fromkeys(chosen + [f"alpha={alpha:g}"] + [str(tag) for tag in tags or ()]))
    if multirun:
        group = group or sweep_group(sweep_dir)
        name = name or override_dirname or None
    return {"tags": tags, "group": group, "name": name}


def sweep_group(sweep_dir: str) -> str:
    """The sweep directory's name; for the default multirun/DATE/TIME, DATE_TIME, as a time alone recurs daily."""
    path = Path(sweep_dir)
    return f"{path.parent.name}_{path.name}" if _DATE.fullmatch(path.parent.name) else path.name


def finish(logger) -> None:
    """Ends the logger's wandb run. A sweep runs its jobs in one process, and a WandbLogger made while a run is
    open logs into that run: without this, every job of a sweep would land in the first job's run."""
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        logger.experiment.finish()


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(project: str, save_dir: str, mode: str = "auto", name: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list[str]] = None, resume: bool = False, **kwargs):
    """A WandbLogger; mode "auto" runs online only when an API key is configured, so a run
    never stops to ask for a login and offline runs can be uploaded later with `wandb sync`.
    wandb writes its files under $WANDB_DIR when it is set, else under save_dir (the run directory).
    A key that wandb refuses (malformed, revoked) or a server it cannot reach does not stop the run either: the
    run logs offline with a one-line warning, as losing hours of training to a logging key would cost more than
    the upload it postpones.
    The run id is kept in <save_dir>/wandb_run_id: a resumed run (resume=True) logs to the same wandb run."""
    from wandb.errors import CommError, UsageError

    if mode not in WANDB_MODES:  # solopo.settings refuses it at startup; this guards a call from other code
        raise ValueError(f"logger.mode={mode!r}; choose {', '.join(WANDB_MODES)}")
    offline = mode == "offline" or (mode == "auto" and not wandb_key_configured())
    id_file = Path(save_dir) / WANDB_RUN_ID_FILE
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    files_dir = os.environ.get("WANDB_DIR") or save_dir  # wandb.init's dir argument would override WANDB_DIR
    Path(files_dir).mkdir(parents=True, exist_ok=True)
    # WandbLogger asks wandb for resume="allow": the id continues its run when there is one, else starts it.
    options = dict(project=project, save_dir=files_dir, name=name, group=group, tags=tags, id=run_id, **kwargs)
    logger = _wandb(offline=offline, **options)
    if offline:  # wandb itself says where the run's files are and how to upload them
        return logger
    try:
        logger.experiment  # wandb.init, where a refused key or an unreachable server shows
    except (CommError, UsageError) as err:  # CommError covers AuthenticationError
        log.warning("wandb could not log online (%s): logging offline instead; `wandb sync %s/wandb` uploads the run "
                    "once WANDB_API_KEY is fixed", str(err).splitlines()[0], save_dir)
        # mode= as well: wandb's session already read the key, and offline=True alone leaves it checking the key
        return _wandb(offline=True, mode="offline", **options)
    return logger


def _wandb(offline: bool, **options):
    """A WandbLogger; offline, wandb is quiet: its run history and summary at the end (some 50 lines, every run)
    repeat what the run's own log and results.json hold, and nobody is to follow a link."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    if offline:
        options.setdefault("settings", wandb.Settings(quiet=True))
    logger = WandbLogger(offline=offline, **options)
    # Lightning passes anonymous=None to wandb.init, which wandb answers with a deprecation warning on every run
    logger._wandb_init.pop("anonymous", None)
    return logger


class _AppendingWriter(ExperimentWriter):
    """Keeps the metrics.csv it finds (Lightning's writer deletes it) and appends under its header."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger that writes <save_dir>/<name>/version_0, one per run directory; a resumed run (resume=True)
    appends its rows to the metrics.csv of the run it continues instead of starting a new version. ``tags`` (the
    same as a wandb run's: the config choices, alpha, then +logger.tags=[a,b]) go into hparams.yaml with the
    config, so that runs logged to CSV are told apart as wandb's are."""

    def __init__(self, save_dir: str, name: str = "csv", prefix: str = "", flush_logs_every_n_steps: int = 100,
                 tags: Sequence[str] = (), resume: bool = False):
        super().__init__(save_dir, name=name, version=0, prefix=prefix, flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.tags, self._resume = [str(tag) for tag in tags or ()], resume

    def log_hyperparams(self, params=None) -> None:
        super().log_hyperparams({**(params or {}), **({"tags": self.tags} if self.tags else {})})

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _AppendingWriter if self._resume else ExperimentWriter
            self._experiment = writer(log_dir=self.log_dir)
        return self._experiment
