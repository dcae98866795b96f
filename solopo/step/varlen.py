"""`model.attn_implementation=solopo_varlen` (the default): causal attention that runs packed rows varlen, with no mask at
all, and every other layout through the kernel that suits it (so `packing=auto` may choose any layout per step).

Packed rows (`packing=true`) put every sequence of a step in one row. Flex attention keeps attention within each
sequence with a block mask, but its kernel is slower than the flash kernel on long sequences; flash-attention's
varlen path needs the flash-attn package. torch itself ships a varlen flash kernel
(`torch.nn.attention.varlen.varlen_attn`, CUDA, 16-bit): this attention function calls it with the sequence
boundaries the collator computed (`cu_seq_lens`, on the host, so no device sync per layer). Without CUDA (or on a
torch without the kernel) it computes the same thing one sequence at a time with SDPA, which is what the CPU tests
check against padded rows.

Shared-prompt rows (`packing=shared_prompt`) arrive as runs (solopo.step.shared_prompt.varlen_runs): query
boundaries, key boundaries and the row positions of the keys (``KEY_INDEX``), a prompt's keys gathered again before each
further response. The same varlen kernel runs them, causal aligned to the lower right where a run has more keys than
queries, as flash-attention aligns it; a probe checks that alignment once per device (``aligns_lower_right``), and
where it fails the rows go to flex attention with its block mask, as they did before the runs (``takes_shared_runs``).
On the CPU the runs go one at a time through SDPA with the lower-right mask.
Everything else (padded rows, generation with left padding and a KV cache) goes through transformers' own SDPA
attention with its usual mask: the mask function returns None only inside `packed_forward()`, the context in which
solopo.step.logps runs a packed row, so no O(T^2) mask is built for it; a model whose forward drops the boundaries
on the way to attention (transformers' Falcon and StableLM) is refused there, as its packed row would attend across
its sequences. A decoding step with grouped key/value heads
reads the KV cache as it is (_decoding_step) instead of repeating it to the query heads, unless the model is set to
repeat them (model.decode_kv_heads=repeated, as transformers before 5.24 does). Packed rows with sliding-window
attention are refused.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from solopo.step.mask_switch import MaskSwitch

NAME = "solopo_varlen"
KEY_INDEX = "solopo_key_index"  # the model-forward keyword of a shared-prompt row's gathered keys


@functools.lru_cache(maxsize=None)
def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch before 2.9
        return None
    return varlen_attn


def repeat_kv(x: Tensor, groups: int, dim: int) -> Tensor:
    """Grouped-query keys or values repeated to the query heads along ``dim`` (no copy when there are no groups)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=dim)


def math_kernel_only(device_type: str, dtype: torch.dtype, groups: int) -> bool:
    """Whether SDPA, given grouped-query heads as they are, could only use its math kernel, which holds the
    (B, H, L, L) scores: on CUDA in 32-bit floats the flash kernel is out and the memory-efficient one takes no
    grouped heads. Padded rows then repeat the keys and values to the query heads first, so that the
    memory-efficient kernel runs (a copy of K and V, against L x L scores per head)."""
    return device_type == "cuda" and dtype == torch.float32 and groups > 1


_mask = MaskSwitch()


def packed_forward() -> ContextManager:
    """Within it, a solopo_varlen model builds no attention mask: the rows are packed and the attention function
    gets the sequence boundaries instead."""
    return _mask.off()


def _repeated_heads(query: Tensor, key: Tensor, value: Tensor, scaling: Optional[float],
                    mask: Optional[Tensor] = None) -> Tensor:
    """(B, H, L, D) queries, (B, H_kv, S, D) keys/values repeated to the query heads -> (B, L, H, D): causal within
    each row without a mask, under ``mask`` with one (a decoding step's padding, as transformers' SDPA attention
    computes it before 5.24: the same kernel call on the same tensors, whatever transformers is installed)."""
    groups = query.shape[1] // key.shape[1]
    out = F.scaled_dot_product_attention(query, repeat_kv(key, groups, 1), repeat_kv(value, groups, 1),
                                         attn_mask=mask, is_causal=mask is None, scale=scaling)
    return out.transpose(1, 2)


@functools.lru_cache(maxsize=None)
def _call_options(kernel) -> tuple[dict, bool]:
    """How this torch's kernel asks for causal attention, and whether it takes grouped key/value heads itself; read
    once per kernel, not in every layer's call. The causal switch moved between torch releases: is_causal=True,
    later window_size=(-1, 0)."""
    params = inspect.signature(kernel).parameters
    return ({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}), "enable_gqa" in params


_UNPACKABLE = ("softcap", "s_aux", "sinks", "position_bias")  # terms transformers' SDPA path adds or refuses itself
DECODE_KV_HEADS = ("grouped", "repeated")  # model.decode_kv_heads
_REPEATED = "solopo_repeats_kv_heads"  # set on an attention layer of a model with model.decode_kv_heads=repeated


def set_decode_kv_heads(model: torch.nn.Module, choice: str) -> None:
    """model.decode_kv_heads for the model's decoding steps with grouped key/value heads: "grouped" (_decoding_step)
    or "repeated" (_repeated_heads). Greedy answers in bf16 differ between the two in some cases (416 of 480
    alike on 4K contexts, experiments/sampling/results/speed_decoding.md), so runs that must generate as earlier ones
    did (a study's later jobs) keep the repeated step."""
    if choice not in DECODE_KV_HEADS:
        raise ValueError(f"model.decode_kv_heads={choice!r}: choose one of {', '.join(DECODE_KV_HEADS)}")
    for module in model.modules():
        if hasattr(module, "num_key_value_groups"):
            setattr(module, _REPEATED, choice == "repeated")


def _grouped_decoding(query: Tensor, key: Tensor, mask: Optional[Tensor], dropout: float, kwargs: dict) -> bool:
    """Whether a step is a decoding step (one query a row) with grouped key/value heads and a padding mask shared by
    all heads: the step model.decode_kv_heads decides."""
    groups = query.shape[1] // key.shape[1]
    return (query.shape[2] == 1 and groups > 1 and isinstance(mask, Tensor) and mask.dim() == 4
            and mask.shape[1] == 1 and mask.shape[2] == 1 and not dropout
            and all(kwargs.get(name) is None for name in _UNPACKABLE))


def _decoding_step(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, scaling: Optional[float]) -> Tensor:
    """One decoding step with grouped key/value heads, (B, H, 1, D) queries -> (B, 1, H, D). The G query heads of a
    key/value head attend as G queries of that head, (B, H_kv, G, D), so the cache is read as it is. SDPA cannot take
    grouped heads with a mask on CUDA (the kernels that take a mask take no groups), and repeating the cache to the
    query heads copies all of it, in every layer at every step: with 4K-token prompts, 40% of a decoding step's GPU
    time. Each query row gets the same scores as before, with the row's padding mask broadcast over its G queries."""
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, key.shape[1], heads // key.shape[1], dim)
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2)


def _varlen_kernel(query: Tensor, key: Tensor, value: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int,
                   scaling: Optional[float]) -> Tensor:
    """(T_q, H, D) packed queries, (T_k, H_kv, D) keys and values -> (T_q, H, D) through torch's varlen flash kernel,
    causal within each sequence."""
    kernel = _torch_varlen()
    causal, takes_gqa = _call_options(kernel)
    groups = query.shape[1] // key.shape[1]
    options = {"scale": scaling, **causal}
    if takes_gqa:
        options["enable_gqa"] = groups > 1
    else:
        key, value = repeat_kv(key, groups, 1), repeat_kv(value, groups, 1)
    return kernel(query, key, value, cu_q, cu_k, max_q, max_k, **options)


@functools.lru_cache(maxsize=None)
def aligns_lower_right(device: torch.device) -> bool:
    """Whether torch's varlen kernel on ``device`` aligns causal attention to the lower right in a sequence with more
    keys than queries (query i of n reads keys up to i + m - n), which shared-prompt runs need. Checked once, on two
    queries over three keys: flash-attention turns causality off where the longest query run is one token, so one
    query would read every key whatever the convention. Queries and keys are zeros (every key scores alike, and the
    probe draws nothing from the device's random stream), values 1, 0, 0: aligned so, query 0 reads two keys (1/2)
    and query 1 all three (1/3); aligned to the upper left, 1 and 1/2. A kernel that does not run on the device (flash
    needs Ampere or newer) counts as not aligned: flex attention then takes the shared prompts, as before the runs."""
    query = torch.zeros(2, 1, 64, device=device, dtype=torch.bfloat16)
    key = torch.zeros(3, 1, 64, device=device, dtype=torch.bfloat16)
    value = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).repeat(1, 1, 64).to(device, torch.bfloat16)
    bounds = lambda n: torch.tensor([0, n], dtype=torch.int32, device=device)  # noqa: E731
    try:
        out = _varlen_kernel(query, key, value, bounds(2), bounds(3), 2, 3, None).float().mean(dim=(1, 2))
    except RuntimeError:
        return False
    return bool(torch.allclose(out.cpu(), torch.tensor([1 / 2, 1 / 3]), atol=1e-2))


def run_by_run(query: Tensor, key: Tensor, value: Tensor, cu_q: Tensor, cu_k: Tensor,
               scaling: Optional[float]) -> Tensor:
    """The same as the varlen kernel, one sequence (run) at a time through SDPA: (T_q, H, D) -> (T_q, H, D); a run
    with more keys than queries under the lower-right causal mask."""
    pieces = []
    for (q0, q1), (k0, k1) in zip(_spans(cu_q), _spans(cu_k)):
        q = query[q0:q1].transpose(0, 1).unsqueeze(0)  # (1, H, n, D)
        k, v = (t[k0:k1].transpose(0, 1).unsqueeze(0) for t in (key, value))
        n, m = q1 - q0, k1 - k0
        mask = None if n == m else torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
        pieces.append(_repeated_heads(q, k, v, scaling, mask)[0])  # (n, H, D)
    return torch.cat(pieces)


def _spans(cu: Tensor) -> list[tuple[int, int]]:
    bounds = cu.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def autocast_inputs(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The attention inputs in the dtype autocast computes attention in, where it is on for their device. Under mixed
    precision with fp32 weights, the rotary embedding leaves queries and keys in fp32 while the values leave their
    projection in bf16. SDPA casts all three itself (it is on autocast's lower-precision list); the varlen and flex
    kernels take them as given, so fp32 would send packed rows to the slow one-sequence-at-a-time path and mixed
    dtypes would fail in flex attention. The cast is the one SDPA makes: the numbers are autocast's."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)


def varlen_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                     scaling: Optional[float] = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function contract: (B, H, L, D) inputs, returns ((B, L, H, D), None)."""
    cu = kwargs.get("cu_seq_lens_q")
    query, key, value = autocast_inputs(query, key, value)
    if _is_block_mask(attention_mask):  # shared prompts (solopo.step.shared_prompt): flex attention's block mask
        from transformers.integrations.flex_attention import flex_attention_forward

        return flex_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if cu is None and _mask.is_off:  # a packed row (packed_forward) whose boundaries the model's forward dropped
        raise ValueError(f"attn_implementation={NAME}: the model's forward did not pass the sequence boundaries "
                         f"(cu_seq_lens_q) on to attention; packed rows need model.attn_implementation=sdpa or "
                         f"flex_attention with this model")
    if cu is None:  # padded rows (causal: no mask), generation: transformers' SDPA attention with the mask it built
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        mask = None if _is_unused(attention_mask) else attention_mask
        if _grouped_decoding(query, key, mask, dropout, kwargs):
            if getattr(module, _REPEATED, False):
                return _repeated_heads(query, key, value, scaling, mask), None
            return _decoding_step(query, key, value, mask, scaling), None
        causal = mask is None and not dropout and query.shape[2] == key.shape[2]  # training's padded rows
        if causal and math_kernel_only(query.device.type, query.dtype, query.shape[1] // key.shape[1]):
            return _repeated_heads(query, key, value, scaling), None
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("sliding_window"):
        raise ValueError(f"attn_implementation={NAME} does not do sliding-window attention; use sdpa or flex_attention")
    if dropout:
        raise ValueError(f"attn_implementation={NAME} has no attention dropout; set the model's attention_dropout to 0")
    if query.shape[0] != 1:
        raise ValueError(f"attn_implementation={NAME}: packed input must be one row, got {query.shape[0]}")
    if KEY_INDEX not in kwargs and kwargs.get("cu_seq_lens_k", cu) is not cu:  # a shared-prompt row lost its keys
        raise ValueError(f"attn_implementation={NAME}: the model's forward did not pass {KEY_INDEX} on to attention; "
                         f"packing=shared_prompt needs model.attn_implementation=flex_attention with this model")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    index = kwargs.get(KEY_INDEX)
    if index is not None:  # shared prompts: each run's keys, a prompt's again before each further response
        k, v = k.index_select(0, index), v.index_select(0, index)
    cu_q = cu.to(device=q.device, dtype=torch.int32)
    cu_k = cu_q if index is None else kwargs["cu_seq_lens_k"].to(device=q.device, dtype=torch.int32)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _torch_varlen() is not None:
        max_q = int(kwargs["max_length_q"])
        return _varlen_kernel(q, k, v, cu_q, cu_k, max_q, int(kwargs.get("max_length_k", max_q)),
                              scaling).unsqueeze(0), None
    if q.is_cuda:  # exact but slow: one SDPA call per sequence
        warnings.warn(f"attn_implementation={NAME}: torch's varlen kernel needs 16-bit inputs on CUDA and torch >= 2.9 "
                      f"(got {q.dtype}, torch {torch.__version__}); attending one sequence at a time instead",
                      stacklevel=2)
    return run_by_run(q, k, v, cu_q, cu_k, scaling).unsqueeze(0), None


def takes_shared_runs(device: torch.device, gathered: bool) -> bool:
    """Whether shared-prompt runs (solopo.step.shared_prompt.varlen_runs) may go to this attention function on
    ``device``: always on the CPU (run by run, under the lower-right mask); on CUDA only where torch has the varlen
    kernel (before 2.9 the run-by-run path is all there is, and flex attention, which took shared prompts until the
    runs, is the faster), and with gathered keys only where that kernel aligns causal attention to the lower right
    (``aligns_lower_right``: a probe run once, outside any compiled region, by the caller, SharedPromptGroup). Where
    either fails, the caller hands flex attention its block mask instead (with a warning for the alignment)."""
    if device.type != "cuda":
        return True
    if _torch_varlen() is None:
        return False
    if not gathered or aligns_lower_right(device):
        return True
    warnings.warn(f"attn_implementation={NAME}: torch {torch.__version__}'s varlen kernel does not align causal attention "
                  f"to the lower right; shared prompts go to flex attention instead", stacklevel=3)
    return False


def unused_mask(device) -> Tensor:
    """What padded and packed rows hand a solopo_varlen model as their attention mask: an empty (1, 1, 1, 0) tensor
    that transformers passes through as a ready 4D mask, and that this attention function reads as "causal within each
    row" (padded rows) or ignores (packed rows: the sequence boundaries go instead). Given no mask, transformers would
    look at the positions and the padding on the device to build one (a sync per forward)."""
    return torch.empty(1, 1, 1, 0, dtype=torch.bool, device=device)


def _is_unused(mask) -> bool:
    return isinstance(mask, Tensor) and mask.dim() == 4 and mask.shape[-1] == 0


def _is_block_mask(mask) -> bool:
    return type(mask).__name__ == "BlockMask"  # without importing flex attention where it is never used


def register() -> None:
    """Make `attn_implementation="solopo_varlen"` loadable, with SDPA's mask outside packed_forward()."""
    _mask.register(NAME, varlen_attention)


def packed_lengths(sequence_ids: Tensor) -> tuple[Tensor, int]:
    """Cumulative sequence boundaries (S + 1,) int32 and the longest sequence of one packed row's sequence ids,
    computed on the host by the collator so that attention needs no device sync."""
    counts = torch.bincount(sequence_ids.flatten())
    cu = torch.zeros(counts.numel() + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(counts, 0)
    return cu, int(counts.max()) if counts.numel() else 0
