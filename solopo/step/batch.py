"""A collated batch: groups of sequences, each of which knows its layout.

Every group holds the sequences of its (context, response) ``keys``, block by block, one sequence per pair in each
block: sequence ``i * n_pairs + j`` is pair j's sequence of ``keys[i]``. Three layouts (solopo.data.collate builds
them, and only it chooses one):

- ``PaddedGroup``: one sequence per row, right-padded; ``attention_mask`` is 0 at the pads (the model needs none: a
  causal row's real tokens never read the pads after them).
- ``PackedGroup``: every sequence in one row, positions restarting at 0 for each; ``sequence_ids`` name the sequence
  of each token and ``cu_seq_lens`` / ``max_length`` its boundaries, for varlen attention kernels.
- ``SharedPromptGroup``: one row in which each prompt appears once per pair, followed by its responses;
  ``segment_ids`` / ``branch_ids`` give the attention mask (solopo.step.shared_prompt), or for solopo_varlen the
  runs of queries and the keys each reads, and ``predict_from`` the position whose hidden state predicts each token.

What differs between layouts is the model's inputs (a method of the layout) and which hidden state predicts which
response token: the collator counts that on the host (``Predictions``), so the step gathers those states with known
shapes and never waits for the device to count a mask. solopo.step.logps runs any layout the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import ContextManager, Optional, Protocol

import torch
from torch import Tensor

from solopo.core.objective import Key
from solopo.step import shared_prompt, varlen


class Group(Protocol):
    """What solopo.step.logps and the training step need of a group, whatever its layout."""

    keys: tuple[Key, ...]
    n_pairs: int
    n_tokens: int  # real (non-padding) tokens the model reads
    ref_logps: Optional[Tensor]  # (S,) precomputed reference log-probs, S = len(keys) * n_pairs, or None

    def to(self, device, **kwargs) -> "Group":
        """The group with every tensor on ``device``."""

    def model_inputs(self, attn_implementation: str) -> dict:
        """The keyword arguments of the model's forward for this layout (ids, positions, mask or varlen bounds)."""

    def forward_context(self) -> ContextManager:
        """The context the model's forward runs in for this layout."""

    def response_predictions(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From the (B, L, H) final hidden states: the state that predicts each response token (N, H), the token
        (N,) and the number of its sequence (N,)."""

    def split(self, values: Tensor) -> dict[Key, Tensor]:
        """A per-sequence (S,) tensor cut into the keys' blocks: {key: (n_pairs,)}."""

    def totals(self, values: Tensor) -> Tensor:
        """Per-sequence (S,) sums over the tokens this process read -> the sums over whole sequences (they differ
        only where sequences are split across processes: solopo.step.context_parallel)."""


@dataclass(frozen=True)
class Predictions:
    """Which hidden state predicts each of the N response tokens of a group, counted on the host by the collator:
    ``source`` (N,) indexes the (B * L, H) flattened final hidden states, ``targets`` (N,) are the tokens and
    ``owner`` (N,) their sequences' numbers."""

    source: Tensor
    targets: Tensor
    owner: Tensor

    @classmethod
    def of(cls, input_ids: Tensor, response_mask: Tensor, source: Tensor, owner: Tensor) -> "Predictions":
        """From (B, L) host tensors: the token ids, the response mask, the flat index of the state predicting each
        position, and each position's sequence."""
        return cls(source[response_mask], input_ids[response_mask], owner[response_mask])

    @classmethod
    def next_token(cls, input_ids: Tensor, response_mask: Tensor, owner: Tensor) -> "Predictions":
        """Rows in which token t is predicted by the state at t - 1 (padded and packed rows)."""
        rows, length = input_ids.shape
        previous = torch.arange(rows * length).view(rows, length) - 1  # position 0 predicts nothing: never a response
        return cls.of(input_ids, response_mask, previous, owner)


@dataclass(frozen=True, kw_only=True)
class Rows:
    """What every layout holds: the sequences' token ids and response mask, the (context, response) blocks in order
    (``keys``: block i holds sequence i * n_pairs + j of pair j), the counts, and the precomputed reference log-probs
    (S,) when the run has them. A layout adds its own tensors and says how the model reads them (``Group``)."""

    keys: tuple[Key, ...]
    input_ids: Tensor
    response_mask: Tensor  # True at the positions of response tokens
    n_pairs: int
    n_tokens: int
    predictions: Predictions
    ref_logps: Optional[Tensor] = None

    def to(self, device, **kwargs):
        """The group with every tensor field on ``device`` (Lightning moves a batch through its ``to``); the
        prediction indices too, without a copy back."""
        moved = {field.name: value.to(device, **kwargs) for field in dataclasses.fields(self)
                 if torch.is_tensor(value := getattr(self, field.name))}
        p = self.predictions
        predictions = Predictions(*(t.to(device, non_blocking=kwargs.get("non_blocking", False))
                                    for t in (p.source, p.targets, p.owner)))
        return dataclasses.replace(self, **moved, predictions=predictions)

    def response_predictions(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gathered at the collator's indices: shapes known on the host, so no device sync."""
        p = self.predictions
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, p.source), p.targets, p.owner

    def split(self, values: Tensor) -> dict[Key, Tensor]:
        return {key: values[i * self.n_pairs : (i + 1) * self.n_pairs] for i, key in enumerate(self.keys)}

    def forward_context(self) -> ContextManager:
        return contextlib.nullcontext()

    def totals(self, values: Tensor) -> Tensor:
        return values  # every sequence is whole here


@dataclass(frozen=True, kw_only=True)
class PaddedGroup(Rows):
    """(B, L) right-padded rows, B = len(keys) * n_pairs; pads carry ``attention_mask`` 0."""

    attention_mask: Tensor

    def model_inputs(self, attn_implementation: str) -> dict:
        # No padding mask: under causal attention a right-padded row's real tokens read only earlier, real ones, and
        # the pads' outputs are never read. Given one, transformers would ask the device whether there is padding (a
        # sync per forward) and attend through a masked kernel instead of the causal flash kernel; solopo_varlen
        # takes a placeholder that spares even the look at the positions (solopo.step.varlen.unused_mask).
        mask = varlen.unused_mask(self.input_ids.device) if attn_implementation == varlen.NAME else None
        return {"input_ids": self.input_ids, "attention_mask": mask}


@dataclass(frozen=True, kw_only=True)
class PackedGroup(Rows):
    """One (1, T) row holding every sequence; ``cu_seq_lens`` (S + 1,) and ``max_length`` are counted on the host."""

    position_ids: Tensor  # each token's position in its sequence
    sequence_ids: Tensor  # each token's sequence
    cu_seq_lens: Tensor
    max_length: int

    def model_inputs(self, attn_implementation: str) -> dict:
        # transformers hands cu_seq_lens_* / max_length_* to the attention function (its flash-attention kwargs).
        # solopo_varlen needs no mask: a placeholder keeps transformers from finding the sequences in the positions on
        # the device (a sync per forward) for a mask nothing would use.
        mask = varlen.unused_mask(self.input_ids.device) if attn_implementation == varlen.NAME else None
        return {"input_ids": self.input_ids, "attention_mask": mask, "position_ids": self.position_ids,
                "cu_seq_lens_q": self.cu_seq_lens, "cu_seq_lens_k": self.cu_seq_lens,
                "max_length_q": self.max_length, "max_length_k": self.max_length}

    def forward_context(self) -> ContextManager:
        return varlen.packed_forward()  # solopo_varlen builds no mask for it


@dataclass(frozen=True, kw_only=True)
class SharedPromptGroup(Rows):
    """One (1, T) row: each prompt once per pair, then its responses, whose positions continue from the prompt's end.
    ``segment_ids`` names a token's prompt and ``branch_ids`` its response (0: the prompt); a token's hidden state is
    predicted from ``predict_from`` (the previous position, except for a response's first token, predicted from its
    prompt's last). The runs a varlen kernel reads (solopo.step.shared_prompt.varlen_runs, counted on the host):
    ``query_bounds`` / ``key_bounds`` (R + 1,), ``max_query`` / ``max_key``, and ``key_index``, the row positions of
    the keys in run order (None where no prompt has a second response)."""

    position_ids: Tensor
    sequence_ids: Tensor
    segment_ids: Tensor
    branch_ids: Tensor
    predict_from: Tensor
    query_bounds: Tensor
    key_bounds: Tensor
    max_query: int
    max_key: int
    key_index: Optional[Tensor]

    def model_inputs(self, attn_implementation: str) -> dict:
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        if attn_implementation != varlen.NAME or not varlen.takes_shared_runs(self.input_ids.device,
                                                                             self.key_index is not None):
            kernel = "flex_attention" if attn_implementation == varlen.NAME else attn_implementation
            mask = shared_prompt.attention_mask(kernel, self.segment_ids, self.branch_ids)
            return {**inputs, "attention_mask": mask}
        # solopo_varlen: no mask (packed_forward), the runs instead (solopo.step.varlen.varlen_attention)
        return {**inputs, "attention_mask": varlen.unused_mask(self.input_ids.device),
                "cu_seq_lens_q": self.query_bounds, "cu_seq_lens_k": self.key_bounds,
                "max_length_q": self.max_query, "max_length_k": self.max_key, varlen.KEY_INDEX: self.key_index}

    def forward_context(self) -> ContextManager:
        return varlen.packed_forward()  # solopo_varlen builds no mask for it; other kernels take the one given


@dataclass(frozen=True)
class Batch:
    """The groups of one collated batch by name (a context's name, or "packed"); every group holds the same pairs."""

    groups: dict[str, Group]

    @property
    def n_pairs(self) -> int:
        return next(iter(self.groups.values())).n_pairs

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens of the batch, for throughput."""
        return sum(group.n_tokens for group in self.groups.values())

    def to(self, device, **kwargs) -> "Batch":
        return Batch({name: group.to(device, **kwargs) for name, group in self.groups.items()})
