"""Training callbacks: throughput and memory of each step, logged next to the losses, and preemption (SIGTERM,
SIGUSR1, Ctrl-C)."""
from __future__ import annotations

import contextlib
import dataclasses
import resource
import signal
import sys
import threading
import time
from typing import Optional

import pytorch_lightning as pl
import torch

from solopo.cache import LOOKUPS
from solopo.training.results import Interrupted


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


class StageCosts:
    """Seconds and peak memory of each stage of a run (sampling, reference, base_eval, training, eval), for a study's
    cost table: ``with stages("sampling"): ...`` records {"sampling": {"s": seconds, "peak_gib": ..., "cached": ...}}.
    On a GPU the peak is torch's since the stage began (its counter is reset then, and the device synchronised at both
    ends, once per stage); on the CPU it is the process's peak resident memory so far. ``"cached": true`` marks a stage
    that read cache entries and computed none (solopo.cache.LOOKUPS): its seconds are the read's, and any wait on the
    entry's lock while another process computed it; its cost is in the run that computed it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.record: dict[str, dict[str, float | bool]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        started, before = time.perf_counter(), dataclasses.replace(LOOKUPS)
        try:
            yield
        except KeyboardInterrupt as err:  # the line that ends the run names the stage (results.record_interrupt)
            raise err if isinstance(err, Interrupted) else Interrupted(name) from None
        if cuda:
            torch.cuda.synchronize(self.device)
        read, computed = LOOKUPS.read - before.read, LOOKUPS.computed - before.computed
        self.record[name] = {"s": time.perf_counter() - started, "peak_gib": peak_memory_gib(self.device),
                             "cached": read > 0 and computed == 0}


class Throughput(pl.Callback):
    """Logs, every step: train/tokens_per_s, the training's mean so far (real tokens trained on / seconds spent in
    training steps, the number the run prints at its end), train/step_tokens and train/step_time_s (this step's tokens
    and seconds, for a rate over any range of steps) and train/peak_mem_gib (since training started). The counts go
    into the checkpoint, with the seconds since the fit began (``started``, a time.perf_counter() reading): a run
    resumed mid-training counts the tokens and seconds of the steps before the resume too, and ``earlier_fit_s`` is
    what its stopped runs spent in their fits up to the checkpoint."""

    def __init__(self, started: float):
        self._started = started
        self._start = 0.0
        self.tokens = 0
        self.seconds = 0.0
        self.earlier_fit_s = 0.0

    @property
    def tokens_per_s(self) -> float:
        """The training's mean: every training step's tokens over every training step's seconds."""
        return self.tokens / max(self.seconds, 1e-9)

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds,
                "fit_s": self.earlier_fit_s + time.perf_counter() - self._started}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens, self.seconds, self.earlier_fit_s = state_dict["tokens"], state_dict["seconds"], state_dict["fit_s"]

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module):
        # The peak of training alone: sampling pairs and evaluating before training hold other, larger batches.
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._start
        tokens = batch.n_tokens  # real (non-padding) tokens, counted by the collator
        self.tokens += tokens
        self.seconds += elapsed
        pl_module.log_dict({
            "train/tokens_per_s": self.tokens_per_s,
            "train/step_tokens": float(tokens),
            "train/step_time_s": elapsed,
            "train/peak_mem_gib": peak_memory_gib(pl_module.device),
        }, on_step=True, on_epoch=False)


class Preempted(BaseException):
    """Raised by Preemption's handler when a signal arrives after training, in a run of one process: the final
    validation, the trained model's evaluation or its saving stops at once (the resumed run does them again). Not an
    Exception, as KeyboardInterrupt is not, so that no ``except Exception`` on the way keeps it."""


class Preemption(pl.Callback):
    """SIGTERM or SIGUSR1 (what schedulers send before they kill or requeue a job) and a first Ctrl-C (SIGINT), from the
    start of the fit until the run's record is written (``watching``). During training, the current optimizer step
    finishes and training stops; LastCheckpoint then writes last.ckpt at that step. A signal that reaches any process
    stops every process at the same step. After training (``after_training``), one process stops at once; several,
    which may be inside one collective operation together, finish their work. A second Ctrl-C aborts at once
    (KeyboardInterrupt), without a checkpoint. ``received`` is the first signal; ``stopped`` says where it stopped the
    run ("training", "after training"), and the caller exits."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: Optional[signal.Signals] = None
        self.stopped: Optional[str] = None
        self._at_once = False  # after training, with one process: the handler raises Preempted
        self._interrupts = 0  # Ctrl-C presses
        self._step_before_batch = -1

    @contextlib.contextmanager
    def watching(self):
        """Takes the signals from the fit until the run's record is written, then puts back the handlers from before:
        a signal before training, or between the jobs of a sweep, ends the process as usual."""
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        previous = {signum: signal.signal(signum, self._notice) for signum in self.SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _notice(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt  # a second Ctrl-C: the user does not wait for the checkpoint
        first, self.received = self.received is None, self.received or signal.Signals(signum)
        if first and self._at_once:
            raise Preempted(self.received.name)

    def _take_over(self, trainer: pl.Trainer) -> None:
        # Lightning sets up its own SIGTERM handler as fit and validate start, around the one before: it would end
        # training with an exception at the next step, and validation with status 0 and no record. A SIGTERM that came
        # in between reached both handlers: this one has it (received), and Lightning's note of it is dropped, which
        # would otherwise end the fit after its next step the same way (SIGTERMException, status 0).
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                signal.signal(signum, self._notice)
            trainer._signal_connector.received_sigterm = False

    def on_train_start(self, trainer, pl_module):
        self._take_over(trainer)  # Lightning puts the handlers from before the fit back when it ends

    def on_validation_start(self, trainer, pl_module):
        self._take_over(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Only after an optimizer step: a stop between the micro-batches of gradient accumulation would lose the
        # gradients of those already read, and the resumed run would not see them again.
        if trainer.global_step == self._step_before_batch:
            return
        if trainer.world_size > 1:  # every process takes part, every step: the signal may have reached one of them
            signum = torch.tensor(self.received.value if self.received else 0, device=pl_module.device)
            signum = int(trainer.strategy.reduce(signum, reduce_op="max"))
            self.received = signal.Signals(signum) if signum else None
        if self.received is not None:
            trainer.should_stop, self.stopped = True, "training"

    @contextlib.contextmanager
    def after_training(self, trainer: pl.Trainer):
        """The work after training (final validation, evaluation, saving), done where ``stopped`` is None. With one
        process, a signal stops it at once, and one that came as training ended skips it; several processes finish it
        (a signal that reached one of them mid-way would leave the others waiting in a collective operation)."""
        self._at_once = trainer.world_size == 1
        if self._at_once and self.received is not None and self.stopped is None:
            self.stopped = "after training"
        try:
            yield
        except Preempted:
            self.stopped = "after training"
        finally:
            self._at_once = False
