"""Preference pairs for an item.

``gold``: chosen = the gold answer, rejected = the item's most plausible wrong answer.
Sampled on-policy pairs (the paper's recipe) plug in here as another rule.
"""
from __future__ import annotations

import random
from typing import Sequence

from solopo.data.contexts import build_contexts
from solopo.data.schema import PreferenceExample, QAItem

PAIR_RULES = ("gold",)


def gold_pair(item: QAItem) -> tuple[str, str]:
    if not item.wrong_answers:
        raise ValueError(f"item {item.id}: gold pairs need at least one wrong answer (field 'wrong_answers')")
    return item.answers[0], item.wrong_answers[0]


def build_examples(
    items: list[QAItem], long_len: int, count_tokens, pairs: str = "gold", seed: int = 0, pool: Sequence[str] = ()
) -> list[PreferenceExample]:
    """One PreferenceExample per item, deterministic in ``seed``; ``pool`` is the shared distractor pool."""
    if pairs not in PAIR_RULES:
        raise ValueError(f"data.pairs={pairs!r} is not available; choose one of {', '.join(PAIR_RULES)}")
    rng = random.Random(seed)
    examples = []
    for item in items:
        contexts = build_contexts(item, long_len, count_tokens, rng, pool)
        chosen, rejected = gold_pair(item)
        examples.append(PreferenceExample(
            id=item.id, question=item.question, answers=item.answers,
            prompt_short=contexts.short, prompt_long=contexts.long,
            chosen=chosen, rejected=rejected, evidence_depths=contexts.evidence_depths,
        ))
    return examples
