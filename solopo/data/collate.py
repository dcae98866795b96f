"""Batches of preference pairs, grouped so that padding costs (almost) nothing.

A batch is {group: {"input_ids", "response_mask", "keys", ...}}. ``keys`` lists the
(context, response) blocks of the group in order; each block holds one sequence per pair.

- Unpacked (default): one group per context, rows right-padded with "attention_mask". The
  short pair is padded only to the longer of its responses, never to the long context.
- Packed: every sequence of the batch in one row, one after the other, with "position_ids"
  restarting at 0 for each sequence, "sequence_ids" naming the sequence of each token, and the boundaries
  "cu_seq_lens" (S + 1,) and "max_length" for varlen kernels.
  Attention stays within a sequence (transformers reads the restarts as packed sequences:
  varlen kernels with flash-attention, a block mask with flex or sdpa), so there is no
  padding at all.
"""
from __future__ import annotations

from typing import Sequence

import torch

from solopo.data.tokenize import TokenizedPair
from solopo.varlen import packed_lengths

Key = tuple[str, str]  # (context, response)


def group_by_context(keys: Sequence[Key]) -> dict[str, tuple[Key, ...]]:
    groups: dict[str, list[Key]] = {}
    for key in keys:
        groups.setdefault(key[0], []).append(key)
    return {context: tuple(group) for context, group in groups.items()}


def _ref_logps(pairs: list[TokenizedPair], keys: Sequence[Key]) -> dict:
    if all(p.ref_logps is not None for p in pairs):  # precomputed reference log-probs travel with the rows
        return {"ref_logps": torch.tensor([p.ref_logps["/".join(k)] for k in keys for p in pairs])}
    return {}


class PairCollator:
    def __init__(self, keys: Sequence[Key], pad_token_id: int, pack: bool = False):
        self.groups = {"packed": tuple(keys)} if pack else group_by_context(keys)
        self.pad_token_id = pad_token_id
        self.pack = pack

    def __call__(self, pairs: list[TokenizedPair]) -> dict[str, dict]:
        build = self._packed if self.pack else self._padded
        return {name: {**build(pairs, keys), "keys": keys, **_ref_logps(pairs, keys)} for name, keys in self.groups.items()}

    def _padded(self, pairs: list[TokenizedPair], keys: tuple[Key, ...]) -> dict:
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
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}

    def _packed(self, pairs: list[TokenizedPair], keys: tuple[Key, ...]) -> dict:
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
        return {"input_ids": row(ids, torch.long), "position_ids": row(positions, torch.long),
                "sequence_ids": sequence_ids, "response_mask": row(response, torch.bool),
                "cu_seq_lens": cu_seq_lens, "max_length": max_length}
