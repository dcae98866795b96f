"""The attention mask of packed rows with shared prompts (`packing=shared_prompt`, see solopo.data.collate).

Each prompt appears once in the row, followed by its responses. A token may attend to an earlier token of the same
prompt segment when that token is in the prompt or in its own response: the chosen and the rejected response both
read the whole prompt, never each other. With positions continuing from the prompt's end in every response, each
response's hidden states are exactly those of its own unpacked (prompt + response) sequence.

One rule, three forms: a BlockMask for flex attention (block-sparse, so a long prompt costs no T x T memory), a dense
(1, 1, T, T) boolean mask for SDPA, which is O(T^2) and meant for short rows and the CPU, and for solopo_varlen no mask
at all but runs of queries with the keys each reads (``varlen_runs``), for a varlen kernel. Other attention kernels
cannot take a mask of this shape.

The runs: a prompt and its first response are one causal sequence, as in a packed row; each further response is a run
of queries that reads the prompt's keys and then its own, the prompt's keys gathered again in front of it. Causal
attention aligned to the lower right (query i of n reads keys up to i + m - n, flash-attention's convention for
m keys) is then exactly ``allowed``: the response reads the whole prompt and its own earlier tokens. The gathered
keys cost one more prompt's keys and values per further response, a small part of the row's activations where keys
and values have fewer heads than queries; the attention itself is the flash kernel's, which runs long rows faster than
flex attention.

The BlockMask is built from block-level bounds of the ids rather than by ``create_block_mask``: evaluated densely,
that costs T x T memory; compiled, it costs a compilation per row length (minutes on a GPU, every step whose
length is new). The bounds cost (T / block)^2 and are exact where it matters: a block pair is "full" only where
every query may read every key and "empty" only where none may; every other pair is "partial" and the kernel
applies ``allowed`` token by token there, so a conservative label changes speed, never the result.
"""
from __future__ import annotations

import torch
from torch import Tensor

KERNELS = ("flex_attention", "sdpa", "solopo_varlen")
BLOCK = 128  # flex attention's default block size


def allowed(segment_ids: Tensor, branch_ids: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """Whether query position ``q`` attends to key position ``kv`` (broadcasting index tensors) in one packed row."""
    return (kv <= q) & (segment_ids[q] == segment_ids[kv]) & ((branch_ids[kv] == 0) | (branch_ids[kv] == branch_ids[q]))


def attention_mask(attn_implementation: str, segment_ids: Tensor, branch_ids: Tensor):
    """The mask of one packed row ((1, T) segment and branch ids) in the form ``attn_implementation`` takes: flex
    attention's BlockMask or SDPA's dense mask (solopo_varlen takes no mask: ``varlen_runs``)."""
    if segment_ids.shape[0] != 1:
        raise ValueError(f"packing=shared_prompt: packed input must be one row, got {segment_ids.shape[0]}")
    segment, branch = segment_ids[0], branch_ids[0]
    if attn_implementation == "flex_attention":
        return block_mask(segment, branch)
    if attn_implementation == "sdpa":
        positions = torch.arange(segment.shape[0], device=segment.device)
        return allowed(segment, branch, positions[:, None], positions[None, :])[None, None]
    raise ValueError(f"packing=shared_prompt takes a mask for model.attn_implementation flex_attention or sdpa (and "
                     f"runs for solopo_varlen); got {attn_implementation}")


def varlen_runs(segment: Tensor, branch: Tensor) -> dict:
    """The runs of one row's (T,) host ids for a varlen kernel, as SharedPromptGroup's fields: ``query_bounds`` and
    ``key_bounds`` (R + 1,) int32, the cumulative queries and keys of the R runs, ``max_query`` and ``max_key`` their
    longest, and ``key_index`` the row positions of the keys in run order, or None where every run reads its own
    tokens only (no prompt has a second response)."""
    width = int(branch.max()) + 1
    values, counts = torch.unique_consecutive(segment * width + branch, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    queries: list[int] = []
    keys: list[list[range]] = []  # per run, the ranges of row positions it reads
    prompt = range(0)
    for value, start, count in zip(values.tolist(), starts.tolist(), counts.tolist()):
        tokens = range(start, start + count)
        if value % width == 0:  # a prompt: the start of a run, which its first response extends
            prompt = tokens
            queries.append(count)
            keys.append([tokens])
        elif start == prompt.stop and keys[-1] == [prompt]:  # the first response, right after its prompt
            queries[-1] += count
            keys[-1].append(tokens)
        else:  # a further response: the prompt's keys again, then its own
            queries.append(count)
            keys.append([prompt, tokens])
    key_lengths = [sum(len(r) for r in run) for run in keys]
    bounds = lambda lengths: torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)  # noqa: E731
    gathered = key_lengths != queries
    return {"query_bounds": bounds(queries), "key_bounds": bounds(key_lengths), "max_query": max(queries),
            "max_key": max(key_lengths),
            "key_index": torch.cat([torch.arange(r.start, r.stop) for run in keys for r in run]) if gathered else None}


def block_classes(segment: Tensor, branch: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """(partial, full): (n, n) booleans over (query block, key block) pairs of one row's (T,) ids, n = ceil(T / block).

    Full: both blocks hold one (segment, branch) each, the same segment, the key block is the prompt or the query's
    own response, and every key precedes every query. Empty (neither): the key block starts after the query block
    ends, or their segment ranges are disjoint, or the key block has no prompt token and its branch range misses the
    query block's. Partial: the rest."""
    length = segment.shape[0]
    n = -(-length // block)

    def bounds(ids: Tensor) -> tuple[Tensor, Tensor]:  # per block; the last block is filled with its last id
        blocks = torch.cat([ids, ids[-1:].expand(n * block - length)]).view(n, block)
        return blocks.amin(1), blocks.amax(1)

    (seg_lo, seg_hi), (br_lo, br_hi) = bounds(segment), bounds(branch)
    first = torch.arange(n, device=segment.device) * block
    last = (first + block).clamp(max=length) - 1
    q, kv = (slice(None), None), (None, slice(None))  # query blocks along rows, key blocks along columns
    empty = ((first[kv] > last[q]) | (seg_hi[kv] < seg_lo[q]) | (seg_lo[kv] > seg_hi[q])
             | ((br_lo[kv] > 0) & ((br_hi[kv] < br_lo[q]) | (br_lo[kv] > br_hi[q]))))
    uniform = (seg_lo == seg_hi) & (br_lo == br_hi)
    full = (uniform[q] & uniform[kv] & (seg_lo[kv] == seg_lo[q]) & ((br_lo[kv] == 0) | (br_lo[kv] == br_lo[q]))
            & (last[kv] <= first[q]))
    return ~empty & ~full, full


def block_mask(segment: Tensor, branch: Tensor, block: int = BLOCK):
    """The flex-attention BlockMask of one row's (T,) ids, from ``block_classes``."""
    from torch.nn.attention.flex_attention import BlockMask

    def mask_mod(b, h, q, kv):
        return allowed(segment, branch, q, kv)

    def ordered(blocks: Tensor) -> tuple[Tensor, Tensor]:  # per query block: how many key blocks, which ones first
        count = blocks.sum(-1, dtype=torch.int32)
        indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return count[None, None], indices[None, None]

    partial, full = block_classes(segment, branch, block)
    length = segment.shape[0]
    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(length, length))
