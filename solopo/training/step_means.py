"""Pair-weighted means of the metrics of one optimizer step, over its accumulated micro-batches and all ranks.

Lightning logs a step's metric from its last micro-batch, and syncs across ranks by averaging the ranks' values; with
gradient accumulation, or ranks holding different numbers of pairs, neither is the mean over the pairs of the step.
StepMeans sums value x pairs over the micro-batches, sums (sums, pairs) across ranks in one all-reduce at the end of
the step, and divides: the mean over every pair the step trained on, the same on every rank. The same sums, kept
over an epoch's steps without the all-reduce (each step's means are global already), give the epoch's means.
Everything stays on the device: nothing here waits for it (a step with no finite pair has NaN means).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from solopo.training.distributed import sum_across_ranks


class StepMeans:
    def __init__(self, across_ranks: bool = True):
        self.across_ranks = across_ranks  # False: the values added are the same on every rank already
        self.keys: Optional[list[str]] = None
        self.sums: Optional[Tensor] = None  # (len(keys) + 1,): value x pairs per key, then the number of pairs

    def add(self, metrics: dict[str, Tensor], pairs: int | Tensor, finite: bool | Tensor = True) -> None:
        """Adds one micro-batch's batch means over ``pairs`` pairs; a non-finite one (finite False, its step is
        skipped) adds nothing but still fixes the keys, so every rank reduces the same tensor. ``finite`` may be a
        device tensor: nothing here waits for the device."""
        if self.keys is None:
            self.keys = sorted(metrics)
        values = torch.stack([metrics[k].detach().float() for k in self.keys])
        finite = torch.as_tensor(finite, device=values.device)
        weight = finite.float() * pairs
        # where, not values x 0: NaN x 0 is NaN
        row = torch.cat([torch.where(finite, values, 0.0) * weight, weight.reshape(1)])
        self.sums = row if self.sums is None else self.sums + row

    def pop(self) -> tuple[dict[str, Tensor], Tensor | int]:
        """The means across all ranks (every rank must call this at the same step, unless across_ranks is False)
        and the number of pairs they cover, a device tensor (0 pairs: NaN means); ({}, 0) when nothing was added."""
        if self.sums is None:
            return {}, 0
        total = sum_across_ranks(self.sums) if self.across_ranks else self.sums
        keys, self.keys, self.sums = self.keys, None, None
        pairs = total[-1]
        return {k: total[i] / pairs for i, k in enumerate(keys)}, pairs
