"""The largest step of a run, in the rows its layout builds: what model.gradient_checkpointing=auto plans for.

A step's memory follows the tokens its rows hold, and those follow the layout (solopo.step.layout): padded rows hold
each sequence padded to its context's longest; a packed row holds every sequence once; a row with shared prompts holds
each context's prompt once per pair, before all of its responses, so Long-PO at 16K holds about 16K tokens where two
padded rows hold 32K. The layout is the collator's to decide (PairCollator.layout_for: ``packing`` as set, or auto's
choice per batch); this module only counts the rows of each layout a batch can take.

With ``packing=auto`` a batch of several pairs takes the layout its longest pair would take alone: choose_layout looks
at the context of the batch's longest sequence and that sequence's length, which are its longest pair's
(tests/test_largest_step.py checks this on random batches). So a batch in a layout holds only pairs no longer than the
longest pair that takes that layout alone, and counting each layout's rows over those pairs, ``batch_size`` times the
longest of each sequence, bounds every batch: a batch just under ``share_from`` takes padded rows, twice the tokens of
a shared-prompt one just above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from solopo.step.layout import PADDED, SHARED_PROMPT, Layout


@dataclass(frozen=True)
class StepTokens:
    """The largest step of a run in one ``layout``: ``rows`` rows of each of ``lengths`` tokens, ``responses`` of them
    the responses'."""

    lengths: tuple[int, ...]
    responses: tuple[int, ...]
    rows: int = 1
    layout: Layout = PADDED
    gathered: int = 0  # keys and values a layer gathers again: each shared prompt once more per further response

    @property
    def packed(self) -> bool:
        """One packed row (with or without shared prompts), whose attention kernels may hold keys and values at every
        query head (solopo.step.checkpointing counts them so)."""
        return self.layout != PADDED

    @property
    def total(self) -> int:
        return self.rows * sum(self.lengths)

    @property
    def response_total(self) -> int:
        return self.rows * sum(self.responses)

    def longer_than(self, positions: Optional[int]) -> tuple[int, int]:
        """The tokens of the rows longer than ``positions`` (None: none is) and how many rows they are."""
        longer = [n for n in self.lengths if positions is not None and n > positions]
        return self.rows * sum(longer), self.rows * len(longer)


def layout_tokens(layout: Layout, pairs: Sequence, keys: Sequence[tuple[str, str]], batch_size: int) -> StepTokens:
    """The rows PairCollator builds in ``layout`` for ``batch_size`` of ``pairs`` (objects with ``prompts`` and
    ``responses`` token lists) at their longest: padded, one row per sequence of ``keys``, as long as its context's
    longest sequence; packed, one row of every sequence; shared prompts, one row of each context's prompt followed by
    its responses, per pair."""
    contexts = {context: [key for key in keys if key[0] == context] for context, _ in keys}
    sequence = {key: max(len(p.prompts[key[0]]) + len(p.responses[key[1]]) for p in pairs) for key in keys}
    response = {key: max(len(p.responses[key[1]]) for p in pairs) for key in keys}
    responses = tuple(response[key] for key in keys)
    if layout == PADDED:
        padded = {context: max(sequence[key] for key in group) for context, group in contexts.items()}
        return StepTokens(tuple(padded[key[0]] for key in keys), responses, batch_size)
    row, gathered = sum(sequence.values()), 0
    if layout == SHARED_PROMPT:
        prompt = {context: max(len(p.prompts[context]) for p in pairs) for context in contexts}
        row = sum(prompt[context] + sum(response[key] for key in group) for context, group in contexts.items())
        gathered = sum(prompt[context] * (len(group) - 1) for context, group in contexts.items())
    return StepTokens((batch_size * row,), (batch_size * sum(responses),), layout=layout, gathered=batch_size * gathered)


def step_tokens(pairs: Sequence, keys: Sequence[tuple[str, str]], batch_size: int,
                layout_for: Callable[[list], Layout]) -> tuple[StepTokens, ...]:
    """The largest step of each layout a batch of ``batch_size`` of ``pairs`` can take, ``layout_for`` giving a batch's
    layout (PairCollator.layout_for): each counted over the pairs no longer than the longest pair that takes it alone
    (the module docstring says why that bounds every batch)."""
    if not pairs:
        return (StepTokens((), ()),)
    longest = [max(len(p.prompts[context]) + len(p.responses[response]) for context, response in keys) for p in pairs]
    reach: dict = {}  # layout -> the longest pair that takes it alone
    for pair, length in zip(pairs, longest):
        layout = layout_for([pair])
        reach[layout] = max(reach.get(layout, 0), length)
    return tuple(layout_tokens(layout, [p for p, n in zip(pairs, longest) if n <= limit], keys, batch_size)
                 for layout, limit in reach.items())
