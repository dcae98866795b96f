"""Training callbacks: throughput and memory of each step, logged next to the losses, and preemption."""
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
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
        read, computed = LOOKUPS.read - before.read, LOOKUPS.computed - before.computed
        self.record[name] = {"s": time.perf_counter() - started, "peak_gib": peak_memory_gib(self.device),
                             "cached": read > 0 and computed == 0}


class Throughput(pl.Callback):
    """Logs, every step: train/tokens_per_s, the fit's mean so far (real tokens trained on / seconds spent in training
    steps, the number the run prints at its end), train/step_tokens and train/step_time_s (this step's tokens and
    seconds, for a rate over any range of steps) and train/peak_mem_gib (since training started)."""

    def __init__(self):
        self._start = 0.0
        self.tokens = 0
        self.seconds = 0.0

    @property
    def tokens_per_s(self) -> float:
        """The fit's mean: every training step's tokens over every training step's seconds."""
        return self.tokens / max(self.seconds, 1e-9)

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


class Preemption(pl.Callback):
    """On SIGTERM or SIGUSR1 (what schedulers send before they kill or requeue a job), finishes the current optimizer
    step and stops training; LastCheckpoint then writes last.ckpt at that step. A signal that reaches any process stops
    every process at the same step. `received` tells the caller to exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: Optional[signal.Signals] = None
        self._previous: dict = {}
        self._step_before_batch = -1

    def on_train_start(self, trainer, pl_module):
        # Installed after Lightning's own SIGTERM handler (set up at fit start), which would end the run with an
        # exception at the next step instead; Lightning puts the handlers from before fit back when it ends.
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._notice) for signum in self.SIGNALS}

    def _notice(self, signum, frame) -> None:
        self.received = signal.Signals(signum)

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
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
