"""Throughput and memory of each training step, logged next to the losses."""
from __future__ import annotations

import resource
import sys
import time

import pytorch_lightning as pl
import torch


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def batch_tokens(batch: dict) -> int:
    """Real (non-padding) tokens of a collated batch; packed rows have no padding."""
    return int(sum(g["attention_mask"].sum() if "attention_mask" in g else g["input_ids"].numel() for g in batch.values()))


class Throughput(pl.Callback):
    """Logs train/tokens_per_s, train/step_time_s and train/peak_mem_gib every step."""

    def __init__(self):
        self._start = 0.0
        self.tokens = 0
        self.seconds = 0.0

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._start
        tokens = batch_tokens(batch)
        self.tokens += tokens
        self.seconds += elapsed
        pl_module.log_dict({
            "train/tokens_per_s": tokens / elapsed,
            "train/step_time_s": elapsed,
            "train/peak_mem_gib": peak_memory_gib(pl_module.device),
        }, on_step=True, on_epoch=False)
