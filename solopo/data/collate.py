"""Batches: for each context, the needed responses of every pair, right-padded.

A batch is {context: {"input_ids", "attention_mask", "response_mask": (N, L), "responses": names}}
where the N = len(names) * B rows hold, in order, response names[0] of every pair, then
names[1] of every pair. Contexts are padded apart, so short sequences never pay for the
long ones' padding.
"""
from __future__ import annotations

from typing import Sequence

import torch

from solopo.data.tokenize import TokenizedPair

Key = tuple[str, str]  # (context, response)


def group_by_context(keys: Sequence[Key]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for context, response in keys:
        groups.setdefault(context, []).append(response)
    return {context: tuple(responses) for context, responses in groups.items()}


class PairCollator:
    def __init__(self, keys: Sequence[Key], pad_token_id: int):
        self.groups = group_by_context(keys)
        self.pad_token_id = pad_token_id

    def __call__(self, pairs: list[TokenizedPair]) -> dict[str, dict]:
        return {context: self._pad(pairs, context, responses) for context, responses in self.groups.items()}

    def _pad(self, pairs: list[TokenizedPair], context: str, responses: tuple[str, ...]) -> dict:
        rows = [(p.prompts[context], p.responses[r]) for r in responses for p in pairs]
        length = max(len(prompt) + len(response) for prompt, response in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        response_mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, (prompt, response) in enumerate(rows):
            n = len(prompt) + len(response)
            input_ids[i, :n] = torch.tensor(prompt + response)
            attention_mask[i, :n] = 1
            response_mask[i, len(prompt) : n] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask, "responses": responses}
