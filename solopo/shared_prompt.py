"""The attention mask of packed rows with shared prompts (`packing=shared_prompt`, see solopo.data.collate).

Each prompt appears once in the row, followed by its responses. A token may attend to an earlier token of the same
prompt segment when that token is in the prompt or in its own response: the chosen and the rejected response both
read the whole prompt, never each other. With positions continuing from the prompt's end in every response, each
response's hidden states are exactly those of its own unpacked (prompt + response) sequence.

One rule, two forms: a BlockMask for flex attention (block-sparse, so a long prompt costs no T x T memory) and a dense
(1, 1, T, T) boolean mask for SDPA, which is O(T^2) and meant for short rows and the CPU. Other attention kernels
cannot take a mask of this shape.
"""
from __future__ import annotations

import torch
from torch import Tensor

KERNELS = ("flex_attention", "sdpa")


def allowed(segment_ids: Tensor, branch_ids: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """Whether query position ``q`` attends to key position ``kv`` (broadcasting index tensors) in one packed row."""
    return (kv <= q) & (segment_ids[q] == segment_ids[kv]) & ((branch_ids[kv] == 0) | (branch_ids[kv] == branch_ids[q]))


def attention_mask(attn_implementation: str, segment_ids: Tensor, branch_ids: Tensor):
    """The mask of one packed row ((1, T) segment and branch ids) in the form ``attn_implementation`` takes."""
    if segment_ids.shape[0] != 1:
        raise ValueError(f"packing=shared_prompt: packed input must be one row, got {segment_ids.shape[0]}")
    segment, branch = segment_ids[0], branch_ids[0]
    length = segment.shape[0]
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q, kv):
            return allowed(segment, branch, q, kv)

        # Compiled, as transformers builds its own block masks: uncompiled, the mask is evaluated densely (T x T).
        return create_block_mask(mask_mod, 1, None, length, length, device=segment.device, _compile=True)
    if attn_implementation == "sdpa":
        positions = torch.arange(length, device=segment.device)
        return allowed(segment, branch, positions[:, None], positions[None, :])[None, None]
    raise ValueError(f"packing=shared_prompt needs model.attn_implementation in {', '.join(KERNELS)}; "
                     f"got {attn_implementation}")
