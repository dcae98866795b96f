"""Preference pairs for an item.

``gold``: chosen = the gold answer, rejected = the item's most plausible wrong answer.
``sampled``: the contexts are built here and the responses left empty; solopo.generation.sampling fills
them with on-policy samples (the paper's recipe) once the policy is loaded. Ready-made pairs
(PreferenceExample records from a pairs file) need no rule: ``to_examples`` keeps them as they are.
"""
from __future__ import annotations

import random
from typing import Sequence

from solopo.data.contexts import build_contexts
from solopo.data.schema import PreferenceExample, QAItem

PAIR_RULES = ("gold", "sampled")


class UnusableItem(ValueError):
    """An item that cannot make a training pair under the run's settings (no wrong answer for a gold pair, too few
    passages for data.long_len): the data's fault or the settings', so the entry point reports it in one line
    naming the data file, before the model loads."""


def gold_pair(item: QAItem) -> tuple[str, str]:
    if not item.wrong_answers:
        raise UnusableItem(f"item {item.id}: its gold pair needs a wrong answer, and no other answer of the data "
                           f"differs from its own ({item.answers[0]!r}); give its record a 'rejected' (a passages "
                           "file, schema A'), or sample the pairs (data.pairs=sampled)")
    return item.answers[0], item.wrong_answers[0]


def to_examples(
    items: Sequence[QAItem | PreferenceExample], long_len: int, count_tokens, pairs: str = "gold", seed: int = 0,
    pool: Sequence[str] = (), template: str = "direct", short_len: int | None = None,
) -> list[PreferenceExample]:
    """The split's PreferenceExample records as they are (ready-made pairs bring their own contexts),
    or pairs built from its QAItem records by ``build_examples``; a split holds one kind only."""
    first_of: dict[type, str] = {}  # each kind -> its first item, for the message
    for item in items:
        first_of.setdefault(type(item), item.id)
    if first_of.keys() == {PreferenceExample}:
        return list(items)
    if first_of.keys() - {QAItem}:
        found = ", ".join(f"{kind.__name__} (item {item_id})" for kind, item_id in first_of.items())
        raise ValueError(f"a split holds ready-made pairs (PreferenceExample) or items to build pairs from (QAItem), "
                         f"one kind only; found {found}")
    return build_examples(list(items), long_len, count_tokens, pairs=pairs, seed=seed, pool=pool, template=template,
                          short_len=short_len)


def build_examples(
    items: list[QAItem], long_len: int, count_tokens, pairs: str = "gold", seed: int = 0, pool: Sequence[str] = (),
    template: str = "direct", short_len: int | None = None,
) -> list[PreferenceExample]:
    """One PreferenceExample per item, deterministic in ``seed``; ``pool`` is the shared distractor pool;
    ``short_len``: see solopo.data.contexts.build_contexts (None: x_short is the evidence alone)."""
    if pairs not in PAIR_RULES:
        raise ValueError(f"data.pairs={pairs!r} is not available; choose one of {', '.join(PAIR_RULES)}")
    rng = random.Random(seed)
    examples = []
    for item in items:
        check_evidence(item)
        try:
            contexts = build_contexts(item, long_len, count_tokens, rng, pool, template=template, short_len=short_len)
        except ValueError as error:  # the builder cannot know which setting to change
            keys = "data.long_len to a length" if short_len is None else "data.long_len (and data.short_len) to lengths"
            raise UnusableItem(f"{error}; set {keys} this data can reach") from error  # data=pairs has no short_len
        chosen, rejected = gold_pair(item) if pairs == "gold" else ("", "")
        examples.append(PreferenceExample(
            id=item.id, question=item.question, answers=item.answers,
            prompt_short=contexts.short, prompt_long=contexts.long,
            chosen=chosen, rejected=rejected, evidence_depths=contexts.evidence_depths,
        ))
    return examples


def check_evidence(item: QAItem) -> None:
    """x_short is the evidence: without separated relevant passages it would hold the question
    alone, and SoLo-RA would align the long context with nothing."""
    if not item.relevant:
        raise UnusableItem(f"item {item.id}: no relevant passages to build its short context from, so it cannot make "
                         "SoLoPO training pairs; LongBench-style data (the whole context in QAItem.context, evidence "
                         "not separated) is for evaluation, not training")
