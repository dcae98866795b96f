"""Reference log-probs computed once, before training, and cached on disk.

The reference model of DPO-style algorithms is the initial policy, frozen: its log-probs
of the training responses are fixed numbers. Computing them in one no-grad pass with
the policy's own weights, before the first update, removes the reference model from
training entirely (no second copy in memory, no extra forward per step). The table is
cached (solopo.cache) under a key of the model, the exact token ids and the settings, so
reruns and sweeps over alpha reuse it.

Under context parallelism (trainer.context_parallel = N > 1) the pass splits the long sequences as training does
(solopo.step.context_parallel): the sequence that needs N processes to train would not fit one process's pass either,
and the table then holds the numbers of training's own split forward. It runs inside the fit (SplitReference), where
the N processes of each context group exist and the policy is still the initial one.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterable, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from solopo.cache import LOOKUPS, DiskCache, digest
from solopo.core.objective import Key
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.step.context_parallel import ContextSplit, Share
from solopo.step.logps import group_logps
from solopo.training.distributed import context_share, is_global_zero, reduce_any
from solopo.progress import progress
from solopo.training.precision import autocast, weights_as

log = logging.getLogger("solopo")


def key_name(key: Key) -> str:
    return "/".join(key)  # ("long", "chosen") -> "long/chosen"


def fingerprint(model_id: str, pairs: Sequence[TokenizedPair], keys: Iterable[Key], precision: str,
                weights: torch.dtype | None = None, context: Optional[ContextSplit] = None) -> str:
    """The cache key of a table: the digest of everything its numbers depend on: the model, the precision, the dtype
    the weights are cast to (when they are), the split of context parallelism (when there is one), the sequences,
    and every pair's id and token ids."""
    head = [model_id, precision, sorted(key_name(k) for k in keys)] + ([str(weights)] if weights is not None else [])
    if context is not None and context.size > 1:  # split sums round otherwise than whole ones
        head.append(["context_parallel", context.size, context.min_tokens])
    # "float64": the table holds the log-probs unrounded (tables of fp32 roundings are not reused for float64 runs)
    return digest("reference", "float64", head, *([p.id, p.prompts, p.responses] for p in pairs))


@torch.no_grad()
def compute_reference_logps(
    model: nn.Module, pairs: Sequence[TokenizedPair], keys: Sequence[Key], pad_token_id: int, chunk_size: int,
    batch_size: int = 4, precision: str = "32-true", desc: str = "reference log-probs",
    pack: bool | str = False, weights: torch.dtype | None = None, context: Optional[ContextSplit] = None,
    share: Optional[Share] = None,
) -> dict[str, dict[str, float]]:
    """{pair id: {"short/chosen": logps, ...}} for every pair and key, with the model as it is now, computed as
    training's forward is: under Lightning's ``precision``, with the weights cast to ``weights`` where the strategy
    casts them (solopo.training.precision.weights_dtype), and with ``share`` the groups ``context`` splits run as
    this process's share of their rows (every process of the context group runs every pair and gets every sum)."""
    device = next(model.parameters()).device
    collate = PairCollator(keys, pad_token_id, pack=pack, device=device.type, kernel=model.config._attn_implementation)
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {p.id: {} for p in pairs}
    try:
        with weights_as(model, weights):
            chunks = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
            for chunk in progress(chunks, desc, unit="pairs"):
                for name, group in collate(chunk).to(device).groups.items():
                    group = context.share_of(name, group, share) if context is not None else group
                    with autocast(device, precision):
                        blocks = group_logps(model, group, chunk_size)
                    for key, (logps, _) in blocks.items():
                        # double: a float64 run's log-probs are kept whole, not rounded to fp32
                        for pair, value in zip(chunk, logps.double().cpu().tolist()):
                            out[pair.id][key_name(key)] = value
    finally:
        model.train(was_training)
    return out


def attach(pairs: Sequence[TokenizedPair], table: dict[str, dict[str, float]]) -> list[TokenizedPair]:
    return [dataclasses.replace(p, ref_logps=table[p.id]) for p in pairs]


def covering(pairs: Sequence[TokenizedPair], keys: Sequence[Key]) -> Callable[[dict], dict[str, dict[str, float]]]:
    """The check of a cached table: a finite number for every pair and key, else ValueError or KeyError."""
    def check(table: dict) -> dict[str, dict[str, float]]:
        for pair in pairs:
            for key in keys:
                if not math.isfinite(table[pair.id][key_name(key)]):
                    raise ValueError(f"non-finite value for {pair.id} {key_name(key)}")
        return table
    return check


def with_reference_logps(
    model: nn.Module, pairs: Sequence[TokenizedPair], keys: Sequence[Key], model_id: str, precision: str,
    pad_token_id: int, cache: DiskCache, chunk_size: int, batch_size: int = 4, pack: bool | str = False,
    desc: str = "reference log-probs", weights: torch.dtype | None = None, context: Optional[ContextSplit] = None,
    share: Optional[Share] = None,
) -> list[TokenizedPair]:
    """The pairs carrying their reference log-probs: from the cache when its entry is intact and covers them, else
    computed with ``model`` as it is now (the initial policy) and cached; with ``share``, split over the context group
    (compute_reference_logps), by every process together (shared_entry)."""
    key = fingerprint(model_id, pairs, keys, precision, weights, context)
    meta = {"model": model_id, "precision": precision, "weights": str(weights), "pairs": len(pairs)}

    def compute() -> dict[str, dict[str, float]]:
        return compute_reference_logps(model, pairs, keys, pad_token_id, batch_size=batch_size, chunk_size=chunk_size,
                                       precision=precision, desc=desc, pack=pack, weights=weights, context=context,
                                       share=share)
    if share is None:
        table = cache.get_or_compute(key, compute, check=covering(pairs, keys), meta=meta, desc=desc)
    else:
        table = shared_entry(cache, key, compute, covering(pairs, keys), meta, desc, next(model.parameters()).device)
    return attach(pairs, table)


def shared_entry(cache: DiskCache, key: str, compute: Callable[[], Any], check: Callable[[Any], Any],
                 meta: dict, desc: str, device: torch.device) -> Any:
    """DiskCache.get_or_compute for processes that compute together (a split pass is collective): when any of them
    lacks the entry, all compute it and rank 0 stores it. No lock is taken: a process queued on another's lock would
    never join the collectives of the one computing. ``device``: where the backend's collectives run."""
    value = cache.get(key, check)
    if not reduce_any(value is None, device):
        log.info("%s from cache %s", desc, cache.path(key))
        LOOKUPS.read += 1
        return value
    value = compute()
    LOOKUPS.computed += 1
    if is_global_zero():
        cache.put(key, value, meta)
    return value


class SplitReference(pl.Callback):
    """The cached reference's pass of a context-parallel run, at the fit's setup: every process exists and the mesh
    is built, and the policy is still the initial one, whole (Lightning shards it and restores a checkpoint after
    this hook). ``compute(share)`` returns each split's pairs with their log-probs; they replace the pairs of
    ``pairs`` in place, the lists the loaders read."""

    def __init__(self, compute: Callable[[Share], dict[str, list[TokenizedPair]]], pairs: dict[str, list]):
        self.compute, self.pairs, self.done = compute, pairs, False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.done:  # the validation after the fit sets up again: the policy has trained by then
            return
        share = context_share(trainer.strategy.device_mesh)
        log.info("reference log-probs: the long sequences split over the %d processes of each context group",
                 share.size)
        for split, attached in self.compute(share).items():
            self.pairs[split][:] = attached
        self.done = True
