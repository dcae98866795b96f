"""Context parallelism: a long sequence split along its length over the N ranks of a context group.

The split is "zigzag": the padded sequence is cut into 2N equal chunks and rank r holds chunks r and 2N-1-r. Under
a causal mask a query at position p reads p + 1 keys, so early chunks are cheap and late ones dear; pairing the r-th
cheapest with the r-th dearest gives every rank the same attention work. Every rank holds the whole batch (token ids
are small) and runs the model on its two chunks with their global positions, so RoPE sees the true positions.
Attention is the only place where tokens meet: each layer all-gathers the group's keys and values (the context
parallelism of Llama 3's training), whose backward sums every rank's gradient of a share back to its owner, and a
rank's queries attend to the gathered keys up to their own global position. It runs under gloo on the CPU as under
NCCL.

solopo's own part is the response-only log-probs. The label of a token at global position p is token p + 1, which
every rank has, so chunk boundaries need nothing. A rank sums the log-probs of the response tokens it predicts (the
response sits at the sequence's end: one rank's chunk or a few), and the sums are added over the group by a
differentiable all-reduce: every rank has the whole sequences' log-probs and the same loss.

Gradients. The all-reduce's backward is an all-reduce too, so the N ranks of a group together compute the gradient
of N x the loss; a sequence that is not split runs whole on every rank of the group and its gradient also counts N
times. FSDP shards over every process and averages their gradients: (1 / (M N)) sum_g N grad L_g over the M
groups = the mean of the groups' gradients, as M data-parallel processes give (solopo.training.distributed).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ContextManager, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from solopo.core.objective import LONG, Key
from solopo.settings.fields import number, refuse
from solopo.step.batch import Group, PaddedGroup
from solopo.step.mask_switch import MaskSwitch
from solopo.step.varlen import repeat_kv

NAME = "solopo_context"  # the attention implementation a context-parallel run loads its models with
REPLACES = ("sdpa", "solopo_varlen")  # the kernels a context-parallel run swaps for it: padded rows through SDPA


def padded_length(length: int, size: int) -> int:
    """``length`` rounded up to a multiple of 2 * size, so that it cuts into 2 * size equal chunks."""
    return -(-length // (2 * size)) * 2 * size


def chunks_of(rank: int, size: int) -> tuple[int, int]:
    """The two of the 2 * size chunks that ``rank`` holds: r and 2 * size - 1 - r."""
    return rank, 2 * size - 1 - rank


def local_positions(length: int, rank: int, size: int) -> Tensor:
    """The global positions (2C,) of rank's tokens in a sequence of ``length``, C = padded_length / (2 size)."""
    chunk = padded_length(length, size) // (2 * size)
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for c in chunks_of(rank, size)])


def split(x: Tensor, rank: int, size: int, dim: int = 1, pad: Any = 0) -> Tensor:
    """Rank's share of ``x`` along ``dim``: ``x`` padded at the end with ``pad`` to padded_length, then chunks r and
    2 size - 1 - r, in that order."""
    length = x.shape[dim]
    extra = padded_length(length, size) - length
    if extra:
        shape = list(x.shape)
        shape[dim] = extra
        x = torch.cat([x, x.new_full(shape, pad)], dim)
    return x.index_select(dim, local_positions(length, rank, size).to(x.device))


def unsplit(shares: Sequence[Tensor], dim: int) -> Tensor:
    """The whole (padded) tensor from every rank's share, ranks in order: the inverse of ``split`` over all ranks."""
    size = len(shares)
    pieces: list[Optional[Tensor]] = [None] * (2 * size)
    for rank, share in enumerate(shares):
        first, second = share.chunk(2, dim)
        pieces[rank], pieces[2 * size - 1 - rank] = first, second
    return torch.cat(pieces, dim)


@dataclass(frozen=True)
class Share:
    """This rank's place in its context group: the process group, the rank within it and its size."""

    group: Any  # torch.distributed.ProcessGroup
    rank: int
    size: int


class _AllGather(torch.autograd.Function):
    """(...) on each of the group's N ranks -> (N, ...) of every rank's, in rank order. Backward: each rank's slice of
    the gradient summed over the ranks (a reduce-scatter; gloo has none, so there an all-reduce, then the slice)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            mine = grad.new_empty(grad.shape[1:])
            dist.reduce_scatter_tensor(mine, grad, group=ctx.group)
            return mine, None
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


class _AllReduce(torch.autograd.Function):
    """The sum over the group's ranks, on every rank. Backward: the sum of the ranks' gradients (its adjoint), so the
    ranks together differentiate the sum of their losses."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def gather_sequence(x: Tensor, share: Share) -> Tensor:
    """(B, H, 2C, D) keys or values of this rank -> (B, H, 2NC, D) of the whole padded sequence, in global order; the
    backward sums every rank's gradient of each share back to its owner."""
    return unsplit(list(_AllGather.apply(x, share.group)), dim=2)


def chunk_attention(query: Tensor, key: Tensor, value: Tensor, end: int, scaling: Optional[float]) -> Tensor:
    """(B, H, C, D) queries at global positions end - C .. end - 1 over the keys before ``end``: causal, aligned at
    the end (query i reads keys 0 .. end - C + i). CUDA kernels take the lower-right causal bias without a mask; on
    the CPU the (C, end) boolean mask is built."""
    length = query.shape[2]
    if query.is_cuda:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(length, end)
    else:
        rows = torch.arange(length, device=query.device)[:, None] + (end - length)
        mask = torch.arange(end, device=query.device)[None, :] <= rows
    return F.scaled_dot_product_attention(query, key[:, :, :end], value[:, :, :end], attn_mask=mask, scale=scaling)


def context_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                      scaling: Optional[float] = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function contract: (B, H, 2C, D) inputs, returns ((B, 2C, H, D), None). A split forward
    passes ``context_share`` (through the model's keyword arguments, which activation checkpointing keeps for the
    recomputation); anything else runs transformers' SDPA attention with its mask."""
    share: Optional[Share] = kwargs.get("context_share")
    if share is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError(f"attn_implementation={NAME} has no attention dropout; set the model's attention_dropout to 0")
    groups = query.shape[1] // key.shape[1]
    keys, values = (repeat_kv(gather_sequence(t, share), groups, 1) for t in (key, value))  # (B, H, 2NC, D)
    chunk = query.shape[2] // 2
    out = [chunk_attention(q, keys, values, (c + 1) * chunk, scaling)
           for q, c in zip(query.split(chunk, dim=2), chunks_of(share.rank, share.size))]
    return torch.cat(out, dim=2).transpose(1, 2), None


_mask = MaskSwitch()


def split_forward() -> ContextManager:
    """Within it, a solopo_context model builds no attention mask: its rows are shares of split sequences, whose
    causality context_attention applies from the global positions (transformers would read their jumps in position
    as packed sequences and build a mask for them)."""
    return _mask.off()


def register() -> None:
    """Make `attn_implementation="solopo_context"` loadable: context_attention, with SDPA's mask outside split_forward()."""
    _mask.register(NAME, context_attention)


@dataclass(frozen=True)
class SplitGroup:
    """One rank's share of a padded group (solopo.step.batch.PaddedGroup) whose rows are split along their length over
    a context group: the Group contract for this rank's tokens. The whole group travels along (every rank of the
    context group has the same batch): its keys, counts and reference log-probs are the group's."""

    whole: PaddedGroup
    share: Share

    @property
    def keys(self) -> tuple[Key, ...]:
        return self.whole.keys

    @property
    def n_pairs(self) -> int:
        return self.whole.n_pairs

    @property
    def n_tokens(self) -> int:
        return self.whole.n_tokens

    @property
    def ref_logps(self) -> Optional[Tensor]:
        return self.whole.ref_logps

    def to(self, device, **kwargs) -> "SplitGroup":
        return replace(self, whole=self.whole.to(device, **kwargs))

    def _positions(self) -> Tensor:
        return local_positions(self.whole.input_ids.shape[1], self.share.rank, self.share.size).to(
            self.whole.input_ids.device)

    def model_inputs(self, attn_implementation: str) -> dict:
        if attn_implementation != NAME:
            raise ValueError(f"a split sequence needs model.attn_implementation={NAME}, got {attn_implementation}")
        ids = split(self.whole.input_ids, self.share.rank, self.share.size)  # (B, 2C); the padding is never read
        positions = self._positions().expand(ids.shape[0], -1)
        return {"input_ids": ids, "position_ids": positions, "attention_mask": None, "context_share": self.share}

    def forward_context(self) -> ContextManager:
        return split_forward()

    def response_predictions(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From this rank's (B, 2C, H) hidden states: those that predict a response token (the label of global
        position p is token p + 1), the token and its row."""
        rank, size = self.share.rank, self.share.size
        # labels shifted left by one, the last position without one, split as the inputs are
        labels = split(F.pad(self.whole.input_ids[:, 1:], (0, 1)), rank, size)
        labelled = split(F.pad(self.whole.response_mask[:, 1:], (0, 1), value=False), rank, size, pad=False)
        rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
        return hidden[labelled], labels[labelled], rows[labelled]

    def split(self, values: Tensor) -> dict[Key, Tensor]:
        return self.whole.split(values)

    def totals(self, values: Tensor) -> Tensor:
        """Per-sequence sums of this rank's share -> the whole sequences' sums, on every rank (differentiable)."""
        return _AllReduce.apply(values, self.share.group)


@dataclass(frozen=True, kw_only=True)
class ContextSplit:
    """Which sequences of a step are split, and over how many ranks (trainer.context_parallel and
    trainer.context_parallel_min_tokens; their defaults and reasons are in solopo/conf/trainer/default.yaml)."""

    size: int  # ranks that share each split sequence; 1: nothing is split
    min_tokens: Optional[int]  # None: the long-context group; else every group whose rows hold this many tokens

    def __post_init__(self) -> None:
        refuse(number("context_parallel", self.size, 1, integer=True)
               + number("context_parallel_min_tokens", self.min_tokens, 1, integer=True, optional=True))

    def splits(self, name: str, group: Group) -> bool:
        """Whether the group of this name (a context's name) is split: padded rows only (packing puts every sequence
        in one row, which cannot be split by context)."""
        if self.size == 1 or not isinstance(group, PaddedGroup):
            return False
        return name == LONG if self.min_tokens is None else group.input_ids.shape[1] >= self.min_tokens

    def share_of(self, name: str, group: Group, share: Optional[Share]) -> Group:
        """The group as this rank runs it: its share when it is split, else the whole group."""
        return SplitGroup(group, share) if share is not None and self.splits(name, group) else group
