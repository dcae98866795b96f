"""Batches of preference pairs, grouped so that padding costs (almost) nothing.

A batch is a solopo.step.batch.Batch: named groups of one layout, the one the collator's ``pack`` chooses (this is
the only place that chooses; ``pack="auto"`` asks solopo.step.layout.choose_layout for each batch). Each group's ``keys`` list its (context, response) blocks in order; each block holds
one sequence per pair.

- Unpacked (default): one PaddedGroup per context, rows right-padded ("attention_mask"). The
  short pair is padded only to the longer of its responses, never to the long context.
- Packed: one PackedGroup, every sequence of the batch in one row, one after the other, with "position_ids"
  restarting at 0 for each sequence, "sequence_ids" naming the sequence of each token, and the boundaries
  "cu_seq_lens" (S + 1,) and "max_length" for varlen kernels.
  Attention stays within a sequence (transformers reads the restarts as packed sequences:
  varlen kernels with flash-attention, a block mask with flex or sdpa), so there is no
  padding at all.
- Packed with shared prompts (``pack="shared_prompt"``): one SharedPromptGroup, as packed, but each context's
  prompt goes into the row once per pair, followed by all of its responses (chosen, then rejected), each
  response's positions continuing from the prompt's end. "segment_ids" names the prompt a token
  belongs to and "branch_ids" its response (0: the prompt itself); a token attends to its prompt and
  to the earlier tokens of its own response (solopo.step.shared_prompt builds that mask, or the runs of
  queries and keys a varlen kernel reads instead).
  "predict_from" gives, for every token, the position whose hidden state predicts it: the previous
  one, except for a later response's first token, predicted from the prompt's last. A long context
  then runs through the model once per pair instead of once per response.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import logging

import torch

from solopo.core.objective import Key
from solopo.data.tokenize import TokenizedPair
from solopo.step import layout
from solopo.step.batch import Batch, PackedGroup, PaddedGroup, Predictions, SharedPromptGroup
from solopo.step.shared_prompt import varlen_runs
from solopo.step.varlen import packed_lengths

log = logging.getLogger("solopo")


def group_by_context(keys: Sequence[Key]) -> dict[str, tuple[Key, ...]]:
    groups: dict[str, list[Key]] = {}
    for key in keys:
        groups.setdefault(key[0], []).append(key)
    return {context: tuple(group) for context, group in groups.items()}


def plain_po(pairs: Iterable[TokenizedPair]) -> bool:
    """Whether every pair's long prompt is its short one, token for token (plain PO data, e.g. a TRL file): a batch of
    them needs no long-context sequence (solopo.core.objective.required_sequences)."""
    return all(pair.prompts["short"] == pair.prompts["long"] for pair in pairs)


def _ref_logps(pairs: list[TokenizedPair], keys: Sequence[Key]) -> torch.Tensor | None:
    if all(p.ref_logps is not None for p in pairs):  # precomputed reference log-probs travel with the rows
        return torch.tensor([p.ref_logps["/".join(k)] for k in keys for p in pairs], dtype=torch.float64)
    return None


SHARED_PROMPT = layout.SHARED_PROMPT
AUTO = layout.AUTO
# padded rows, packed rows, packed rows with shared prompts, or the fastest exact one per batch (solopo.step.layout)
PACKINGS = (False, True, SHARED_PROMPT, AUTO)


class PairCollator:
    """``pack``: one of PACKINGS. With "auto", ``device`` ("cuda" or "cpu") and ``kernel`` (the model's
    attn_implementation) are what solopo.step.layout.choose_layout decides from, with ``rules``."""

    def __init__(self, keys: Sequence[Key], pad_token_id: int, pack: bool | str = False, *, device: str = "cpu",
                 kernel: str = "sdpa", rules: layout.LayoutRules = layout.LayoutRules()):
        if not any(type(pack) is type(p) and pack == p for p in PACKINGS):
            raise ValueError(f"pack={pack!r}: choose false, true, {SHARED_PROMPT} or {AUTO}")
        self.keys = tuple(keys)
        self.pad_token_id = pad_token_id
        self.pack = pack
        self.device, self.kernel, self.rules = device, kernel, rules
        self.responses_per_context = {context: len(group) for context, group in group_by_context(keys).items()}
        self.last_layout: bool | str | None = None  # auto: the layout of the previous batch, logged when it changes

    def layout_of(self, pairs: list[TokenizedPair]) -> bool | str:
        """The layout of this batch: ``pack`` itself, or auto's choice for its lengths (logged when it changes)."""
        chosen = self.layout_for(pairs)
        if self.pack == AUTO and chosen != self.last_layout:
            log.info(layout.describe(chosen, self.longest(pairs)))
            self.last_layout = chosen
        return chosen

    def layout_for(self, pairs: list[TokenizedPair]) -> bool | str:
        """The layout this collator gives a batch of ``pairs``, without a word in the log (the memory planner,
        solopo.step.checkpointing.step_tokens, asks it of many batches)."""
        if self.pack != AUTO:
            return self.pack
        return layout.choose_layout(self.responses_per_context, self.longest(pairs), self.device, self.kernel,
                                    self.rules)

    def longest(self, pairs: list[TokenizedPair]) -> dict[str, int]:
        """The tokens of each context's longest sequence (prompt + response) among ``pairs``."""
        return {context: max(len(p.prompts[context]) + len(p.responses[response]) for p in pairs
                             for c, response in self.keys if c == context) for context in self.responses_per_context}

    def __call__(self, pairs: list[TokenizedPair]) -> Batch:
        pack = self.layout_of(pairs)
        groups = {"packed": self.keys} if pack else group_by_context(self.keys)
        build = self._shared if pack == SHARED_PROMPT else self._packed if pack else self._padded
        return Batch({name: build(pairs, keys, _ref_logps(pairs, keys)) for name, keys in groups.items()})

    def _padded(self, pairs: list[TokenizedPair], keys: tuple[Key, ...], ref_logps: torch.Tensor | None) -> PaddedGroup:
        rows = [(p.prompts[context], p.responses[response]) for context, response in keys for p in pairs]
        length = max(len(prompt) + len(response) for prompt, response in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        response_mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, (prompt, response) in enumerate(rows):
            n = len(prompt) + len(response)
            input_ids[i, :n] = torch.tensor(prompt + response)
            attention_mask[i, :n] = 1
            response_mask[i, len(prompt) : n] = True
        rows = torch.arange(len(rows)).unsqueeze(1).expand_as(input_ids)  # one sequence per row
        return PaddedGroup(keys=keys, input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                           n_pairs=len(pairs), n_tokens=int(attention_mask.sum()), ref_logps=ref_logps,
                           predictions=Predictions.next_token(input_ids, response_mask, rows))

    def _packed(self, pairs: list[TokenizedPair], keys: tuple[Key, ...], ref_logps: torch.Tensor | None) -> PackedGroup:
        ids, positions, sequences, response = [], [], [], []
        for index, (prompt, resp) in enumerate((p.prompts[c], p.responses[r]) for c, r in keys for p in pairs):
            ids += prompt + resp
            positions += range(len(prompt) + len(resp))
            sequences += [index] * (len(prompt) + len(resp))
            response += [False] * len(prompt) + [True] * len(resp)
        row = lambda values, dtype: torch.tensor(values, dtype=dtype).unsqueeze(0)  # noqa: E731  (1, T)
        sequence_ids = row(sequences, torch.long)
        # The sequence boundaries, counted here on the host, for varlen kernels (solopo_varlen, flash-attention).
        cu_seq_lens, max_length = packed_lengths(sequence_ids)
        input_ids, response_mask = row(ids, torch.long), row(response, torch.bool)
        return PackedGroup(keys=keys, input_ids=input_ids, position_ids=row(positions, torch.long),
                           sequence_ids=sequence_ids, response_mask=response_mask, cu_seq_lens=cu_seq_lens,
                           max_length=max_length, n_pairs=len(pairs), n_tokens=len(ids), ref_logps=ref_logps,
                           predictions=Predictions.next_token(input_ids, response_mask, sequence_ids))

    def _shared(self, pairs: list[TokenizedPair], keys: tuple[Key, ...],
                ref_logps: torch.Tensor | None) -> SharedPromptGroup:
        # Sequence numbers as in the other layouts (block of ``keys`` by block, one per pair), so logps split alike.
        number = {key: i * len(pairs) for i, key in enumerate(keys)}
        columns = {name: [] for name in ("input_ids", "position_ids", "sequence_ids", "response_mask", "segment_ids",
                                         "branch_ids", "predict_from")}

        def extend(tokens, start_position, sequence, segment, branch, predicted_from):
            for name, values in (("input_ids", tokens), ("position_ids", range(start_position, start_position + len(tokens))),
                                 ("sequence_ids", [sequence] * len(tokens)), ("response_mask", [branch > 0] * len(tokens)),
                                 ("segment_ids", [segment] * len(tokens)), ("branch_ids", [branch] * len(tokens)),
                                 ("predict_from", predicted_from)):
                columns[name] += values

        segment = 0
        for context, group in group_by_context(keys).items():
            for j, pair in enumerate(pairs):
                prompt, start = pair.prompts[context], len(columns["input_ids"])
                if not prompt:
                    raise ValueError(f"pair {pair.id}: the {context} prompt is empty; a shared prompt needs a token")
                last = start + len(prompt) - 1  # its hidden state predicts every response's first token
                extend(prompt, 0, number[group[0]] + j, segment, 0, [max(start - 1, 0)] + list(range(start, last)))
                for branch, key in enumerate(group, 1):
                    response, at = pair.responses[key[1]], len(columns["input_ids"])
                    extend(response, len(prompt), number[key] + j, segment, branch,
                           ([last] + list(range(at, at + len(response) - 1)))[: len(response)])
                segment += 1
        dtypes = {"response_mask": torch.bool}
        tensors = {name: torch.tensor(values, dtype=dtypes.get(name, torch.long)).unsqueeze(0)
                   for name, values in columns.items()}
        predictions = Predictions.of(tensors["input_ids"], tensors["response_mask"], tensors["predict_from"],
                                     tensors["sequence_ids"])  # one row: predict_from indexes it flat
        runs = varlen_runs(tensors["segment_ids"][0], tensors["branch_ids"][0])
        return SharedPromptGroup(keys=keys, **tensors, **runs, n_pairs=len(pairs), n_tokens=len(columns["input_ids"]),
                                 ref_logps=ref_logps, predictions=predictions)
