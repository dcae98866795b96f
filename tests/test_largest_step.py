"""The largest step of a run in the rows its layout builds (solopo.step.largest_step): each layout's rows by hand, the
layout decided by the collator itself, and every batch auto can build holding no more tokens than counted."""
import itertools
import random

import pytest

from solopo.data.collate import AUTO, PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.step.largest_step import StepTokens, layout_tokens, step_tokens
from solopo.step.layout import PACKED, PADDED, SHARED_PROMPT, LayoutRules

SOLOPO = [("short", "chosen"), ("short", "rejected"), ("long", "chosen")]
LONG_PO = [("long", "chosen"), ("long", "rejected")]
BOTH = SOLOPO + [("long", "rejected")]
RULES = LayoutRules(share_from=30, pack_below=40)  # the tables' rules at the tests' lengths


def pair(short: int, long: int, chosen: int, rejected: int, name: str = "p") -> TokenizedPair:
    return TokenizedPair(name, {"short": [1] * short, "long": [1] * long}, {"chosen": [2] * chosen,
                                                                            "rejected": [2] * rejected})


def auto(keys) -> PairCollator:
    return PairCollator(keys, 0, AUTO, device="cuda", kernel="solopo_varlen", rules=RULES)


def rows_tokens(batch) -> int:
    """The tokens the model runs for a collated batch: every position of its rows, padding included."""
    return sum(group.input_ids.numel() for group in batch.groups.values())


def test_each_layout_by_hand():
    """Two pairs: short prompts 5 / 7, long 20 / 18; chosen 3 / 6, rejected 4 / 1; two pairs a step. Longest
    sequences: short/chosen 13, short/rejected 9, long/chosen 24, long/rejected 22; responses 6 and 4."""
    pairs = [pair(5, 20, 3, 4), pair(7, 18, 6, 1)]
    # padded: each context's rows as long as its longest sequence, 13 for both short rows
    assert layout_tokens(PADDED, pairs, SOLOPO, 2) == StepTokens((13, 13, 24), (6, 4, 6), rows=2)
    # packed: one row of every sequence, 2 x (13 + 9 + 24)
    assert layout_tokens(PACKED, pairs, SOLOPO, 2) == StepTokens((92,), (32,), layout=PACKED)
    # shared prompts: each prompt once per pair, then its responses: 2 x ((7 + 6 + 4) + (20 + 6)); the short prompt's
    # keys gathered again for its second response (solopo_varlen's runs): 2 x 7
    assert layout_tokens(SHARED_PROMPT, pairs, SOLOPO, 2) == StepTokens((86,), (32,), layout=SHARED_PROMPT, gathered=14)
    # Long-PO shared: 2 x (20 + 6 + 4) = 60, against 2 x 2 x 24 = 96 in padded rows; 2 x 20 keys gathered again
    assert layout_tokens(SHARED_PROMPT, pairs, LONG_PO, 2).total == 60
    assert layout_tokens(SHARED_PROMPT, pairs, LONG_PO, 2).gathered == 40
    assert layout_tokens(PADDED, pairs, LONG_PO, 2).total == 96


def test_long_po_counts_each_long_prompt_once():
    """Long-PO at 64 long tokens (over share_from): auto shares the prompt, so the step holds 64 + 8 + 8 tokens, about
    half the two whole sequences a padded count takes (2 x 72)."""
    step, = step_tokens([pair(10, 64, 8, 8)], LONG_PO, 1, auto(LONG_PO).layout_for)
    assert (step.total, step.layout) == (80, SHARED_PROMPT)


def test_the_layout_is_packing_as_set():
    pairs = [pair(10, 64, 8, 8)]
    for pack, expected in ((False, 2 * 72), (True, 2 * 72), (SHARED_PROMPT, 80)):
        step, = step_tokens(pairs, LONG_PO, 1, PairCollator(LONG_PO, 0, pack).layout_for)
        assert (step.total, step.layout) == (expected, pack)


def test_a_batch_just_under_share_from_is_counted_padded():
    """Two pairs a step, one Long-PO pair just under share_from (29 long tokens: padded rows) and one far over it (60:
    shared prompt). A batch of the short pair twice holds 2 x 2 x 29 = 116 tokens in padded rows, more than the
    shared-prompt count of the short pair's lengths; the padded step counts only pairs no longer than 29."""
    pairs = [pair(4, 25, 4, 4, "under"), pair(4, 60, 4, 4, "over")]
    steps = step_tokens(pairs, LONG_PO, 2, auto(LONG_PO).layout_for)
    assert {step.layout: step.total for step in steps} == {PADDED: 116, SHARED_PROMPT: 2 * (60 + 4 + 4)}


def test_a_batch_takes_the_layout_of_its_longest_pair():
    """What step_tokens builds on (the module docstring): auto's choice for a batch is its longest pair's alone."""
    rng = random.Random(0)
    for keys in (SOLOPO, LONG_PO, BOTH):
        collate = auto(keys)
        pairs = [pair(rng.randint(2, 45), rng.randint(2, 45), rng.randint(1, 6), rng.randint(1, 6)) for _ in range(12)]
        for batch in itertools.combinations(pairs, 3):
            longest = max(batch, key=lambda p: max(collate.longest([p]).values()))
            assert collate.layout_for(list(batch)) == collate.layout_for([longest])


@pytest.mark.parametrize("keys", [SOLOPO, LONG_PO, BOTH], ids=["solopo", "long_po", "both"])
def test_no_batch_holds_more_than_its_layout_counts(keys):
    """Every batch of two the collator can build from pairs around both thresholds holds at most the tokens counted
    for its layout, and that layout is counted."""
    rng = random.Random(1)
    pairs = [pair(rng.randint(2, 30), rng.randint(10, 45), rng.randint(1, 6), rng.randint(1, 6)) for _ in range(10)]
    collate = auto(keys)
    counted = {step.layout: step.total for step in step_tokens(pairs, keys, 2, collate.layout_for)}
    assert len(counted) > 1  # the pairs straddle a threshold
    for batch in itertools.combinations_with_replacement(pairs, 2):
        assert rows_tokens(collate(list(batch))) <= counted[collate.layout_for(list(batch))]


def test_no_pairs_make_an_empty_step():
    assert step_tokens([], SOLOPO, 2, auto(SOLOPO).layout_for) == (StepTokens((), ()),)


def test_longer_than_counts_rows():
    step = StepTokens((13, 13, 24), (6, 4, 6), rows=2)
    assert step.longer_than(12) == (2 * (13 + 13 + 24), 6) and step.longer_than(None) == (0, 0)
    assert StepTokens((92,), (32,), layout=PACKED).longer_than(40) == (92, 1)
