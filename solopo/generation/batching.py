"""Batches for generation: prompts sorted by length and grouped under a token budget, answers put back in the
prompts' order; the weights and attention generation computes with; whether a batch decodes from a static KV cache
(solopo.generation.decoding, whose step a GPU replays as a CUDA graph).

A left-padded batch is as wide as its longest prompt, so sorting by length keeps padding small, and a budget in
tokens (rather than a number of rows) lets short prompts go many at a time and long ones few, for the same memory:

    cost(batch) = rows x copies x (longest prompt + new tokens)   <=   max_tokens

where copies is the number of sequences each prompt generates (k samples share one prompt's prefill). The budget is
set for a GPU of one's own; where other jobs take memory meanwhile, a batch that runs out of it is generated in halves
(split_on_oom) rather than ending the run.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Callable, Sequence, TypeVar

import torch

from solopo.progress import progress
from solopo.step import varlen
from solopo.training.precision import autocast_dtype, weights_as

log = logging.getLogger(__name__)
MASKED_ATTENTION = ("sdpa", varlen.NAME)  # the kernels that read the static path's 4D boolean mask as it is
T = TypeVar("T")


def budget_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None, new_tokens: int,
                   copies: int = 1) -> list[list[int]]:
    """Indices of ``lengths`` (prompt tokens) in batches, longest prompts first: each batch has at most ``max_rows``
    prompts and, when ``max_tokens`` is set, costs at most that (the formula above; a prompt whose cost alone is
    over it makes a batch of its own). Ties keep the prompts' order, so the batches are repeatable."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        # longest first: the batch's first prompt sets its width
        width = (lengths[batch[0]] if batch else lengths[i]) + new_tokens
        full = batch is None or len(batch) >= max_rows or (
            max_tokens is not None and (len(batch) + 1) * copies * width > max_tokens)
        if full:
            batches.append([i])
        else:
            batch.append(i)
    return batches


def in_prompt_order(batches: Sequence[Sequence[int]], outputs: Sequence[Sequence[T]]) -> list[T]:
    """The outputs of ``batches`` (one per index, in the batch's order) put back in the order of the prompts."""
    placed: dict[int, T] = {}
    for batch, results in zip(batches, outputs):
        if len(batch) != len(results):
            raise ValueError(f"a batch of {len(batch)} prompts gave {len(results)} outputs")
        placed.update(zip(batch, results))
    return [placed[i] for i in range(len(placed))]


def split_on_oom(generate_rows: Callable[[Sequence[int]], list[T]], rows: Sequence[int], desc: str,
                 copies: int = 1) -> list[T]:
    """``generate_rows(rows)``, one output per row; where that runs out of GPU memory, the cached blocks are freed and
    each half of ``rows`` is generated on its own, recursively (first half first, so the outputs keep the rows'
    order), down to one row, whose running out of memory is raised. One warning line per split.

    The outputs are those of generate_rows on the halves, whatever the failed attempt did: it must not depend on
    state the attempt changed (sampling re-seeds its generator in generate_rows, solopo.generation.sampling)."""
    try:
        return generate_rows(rows)
    except torch.OutOfMemoryError:
        if len(rows) == 1:
            raise
    # Out of the except block: the exception's traceback holds the failed attempt's frames, and with them its
    # activations and KV cache, until the block ends; only then can their memory go back.
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    half = (len(rows) + 1) // 2
    log.warning("%s: out of GPU memory on a batch of %d prompts (%d sequences); generating it as %d + %d prompts",
                desc, len(rows), len(rows) * copies, half, len(rows) - half)
    return (split_on_oom(generate_rows, rows[:half], desc, copies)
            + split_on_oom(generate_rows, rows[half:], desc, copies))


def generate_batches(model, batches: Sequence[Sequence[int]], generate_rows: Callable[[Sequence[int]], list[T]], *,
                     static: bool, half: bool, precision: str, desc: str, copies: int = 1) -> list[T]:
    """``generate_rows`` over each batch of prompt indices, the model in eval mode and on its generation weights
    (generation_weights), progress shown (solopo.progress), a batch out of memory generated in halves (split_on_oom);
    one output per prompt, in the prompts' order. The model's training mode comes back afterwards. Layers compiled for
    training (model.compile) run eagerly here: each decoding step's cache has other shapes and strides, so each would
    compile again until torch gives up (its recompile limit, 8), for nothing."""
    was_training = model.training
    model.eval()
    outputs: list[list[T]] = []
    try:
        with generation_weights(model, static, half, precision), torch.compiler.set_stance("force_eager"):
            for batch in progress(batches, desc, copies=copies):
                outputs.append(split_on_oom(generate_rows, batch, desc, copies))
    finally:
        model.train(was_training)
    return in_prompt_order(batches, outputs)


def uses_static_cache(model, wanted: bool) -> bool:
    """A static KV cache (and with it the decoding step replayed as a CUDA graph) where it pays: on a GPU, when
    asked, for a model of its own (a sharded model's forward gathers its weights from the other processes at every
    step, which a graph replayed on one process alone must not hold)."""
    if not (wanted and next(model.parameters()).device.type == "cuda"):
        return False
    from solopo.training.distributed import is_sharded  # here: that module brings Lightning, 4 s to import

    return not is_sharded(model)


@contextmanager
def generation_weights(model, static: bool, half: bool, precision: str):
    """The weights and the attention generation computes with, for the duration.

    Weights: with ``half`` (the settings' half_weights), under mixed precision, generation computes with copies of the
    weights in the autocast dtype while it lasts (solopo.training.precision.weights_as: the fp32 masters come back
    unchanged), as FSDP2's forward does: fp32 weights under autocast cast every matmul's weights at every decoding
    step, and their fp32 rotary embedding promotes the keys, so the KV cache holds fp32 keys (twice the bytes to
    read at each step); the copies measured 1.5x to 2x faster (experiments/sampling/results/speed.md, budget against
    budget_fp32). Without autocast (32-true) there is no half dtype and the weights are the model's own; nor does a
    sharded model (FSDP2) get copies: its forward gathers the weights in its own param_dtype (bf16 under the bf16
    precisions) and never reads the shards' .data that copies would replace.
    The static path takes the copies whatever ``half`` says: its KV cache holds keys and values of the dtype of the
    first ones it sees (one dtype for both before transformers 5.2x), and fp32 keys with half values break it.

    Attention: the static path (solopo.generation.decoding) attends through a 4D boolean mask over its cache, which
    transformers' SDPA attention and solopo_varlen read (solopo_varlen's decoding step reads grouped key/value heads
    as they are, SDPA repeats them to the query heads) and the others do not (eager adds its mask to the scores,
    flash and flex take none): a model on another kernel attends with SDPA there. The dynamic path keeps the
    model's attention."""
    from solopo.training.distributed import is_sharded  # here: that module brings Lightning, 4 s to import

    copies = (static or half) and not is_sharded(model)
    dtype = autocast_dtype(precision) if copies else None
    if dtype is not None:
        say_copies(dtype)
    with weights_as(model, dtype):
        kernel = model.config._attn_implementation
        swap = static and kernel not in MASKED_ATTENTION
        if swap:
            model.config._attn_implementation = "sdpa"
        try:
            yield model
        finally:
            if swap:
                model.config._attn_implementation = kernel


@functools.cache
def say_copies(dtype: torch.dtype) -> None:
    """Once per process: what generation computes with, where it is not the model's own weights."""
    log.info("generation computes with %s copies of the weights (eval.half_weights, data.sampling.half_weights; "
             "the model's own weights are left as they are)", str(dtype).removeprefix("torch."))
