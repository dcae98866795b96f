"""Reference log-probs computed once, before training, and cached on disk.

The reference model of DPO-style algorithms is the initial policy, frozen: its log-probs
of the training responses are fixed numbers. Computing them in one no-grad pass with
the policy's own weights, before the first update, removes the reference model from
training entirely (no second copy in memory, no extra forward per step). The table is
cached (solopo.cache) under a key of the model, the exact token ids and the settings, so
reruns and sweeps over alpha reuse it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from solopo.cache import DiskCache, digest
from solopo.core.objective import Key
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.step.logps import group_logps
from solopo.training.precision import autocast, weights_as


def key_name(key: Key) -> str:
    return "/".join(key)  # ("long", "chosen") -> "long/chosen"


def fingerprint(model_id: str, pairs: Sequence[TokenizedPair], keys: Iterable[Key], precision: str,
                weights: torch.dtype | None = None) -> str:
    """The cache key of a table: the digest of everything its numbers depend on: the model, the precision, the dtype
    the weights are cast to (when they are), the sequences, and every pair's id and token ids."""
    head = [model_id, precision, sorted(key_name(k) for k in keys)] + ([str(weights)] if weights is not None else [])
    # "float64": the table holds the log-probs unrounded (tables of fp32 roundings are not reused for float64 runs)
    return digest("reference", "float64", head, *([p.id, p.prompts, p.responses] for p in pairs))


@torch.no_grad()
def compute_reference_logps(
    model: nn.Module, pairs: Sequence[TokenizedPair], keys: Sequence[Key], pad_token_id: int, chunk_size: int,
    batch_size: int = 4, precision: str = "32-true", desc: str = "reference log-probs",
    pack: bool | str = False, weights: torch.dtype | None = None,
) -> dict[str, dict[str, float]]:
    """{pair id: {"short/chosen": logps, ...}} for every pair and key, with the model as it is now, computed as
    training's forward is: under Lightning's ``precision``, with the weights cast to ``weights`` where the strategy
    casts them (solopo.training.precision.weights_dtype)."""
    device = next(model.parameters()).device
    collate = PairCollator(keys, pad_token_id, pack=pack, device=device.type, kernel=model.config._attn_implementation)
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {p.id: {} for p in pairs}
    try:
        with weights_as(model, weights):
            # disable=None: a bar on a terminal only, not in a log file
            for start in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", disable=None):
                chunk = pairs[start : start + batch_size]
                for group in collate(chunk).to(device).groups.values():
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
    desc: str = "reference log-probs", weights: torch.dtype | None = None,
) -> list[TokenizedPair]:
    """The pairs carrying their reference log-probs: from the cache when its entry is intact and covers them, else
    computed with ``model`` as it is now (the initial policy) and cached."""
    table = cache.get_or_compute(
        fingerprint(model_id, pairs, keys, precision, weights),
        lambda: compute_reference_logps(model, pairs, keys, pad_token_id, batch_size=batch_size, chunk_size=chunk_size,
                                        precision=precision, desc=desc, pack=pack, weights=weights),
        check=covering(pairs, keys), desc=desc,
        meta={"model": model_id, "precision": precision, "weights": str(weights), "pairs": len(pairs)})
    return attach(pairs, table)
