"""Plausible wrong answers for gold preference pairs, drawn from the other answers of the same file.

A rejected answer should be the kind of answer the question asks for (a year for "when", a
name for "who"); otherwise the pair teaches little beyond the answer's type.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from solopo.data.schema import QAItem
from solopo.scoring import normalize_answer, sub_em

MAX_WRONG = 3
_DRAWS = 64  # candidates looked at per pool: bounded, so 100k items cost O(items), not O(items^2)
_OPPOSITE = {"yes": "no", "no": "yes"}
_ANY_GROUP = None

Pools = dict[tuple[str, str | None], list[str]]


def answer_kind(answer: str) -> str:
    """"yesno"; "numeric" (a number, perhaps with a unit: "1996", "3,677 seated", "430 km"); or "text"."""
    normalized = normalize_answer(answer)
    if normalized in _OPPOSITE:
        return "yesno"
    words = normalized.split()
    return "numeric" if words and words[0].isdigit() and len(words) <= 3 else "text"


def add_wrong_answers(items: Sequence[QAItem], groups: Sequence[str], seed: int) -> list[QAItem]:
    """Each item with up to MAX_WRONG wrong answers, deterministic in ``seed`` and the item's id
    (not in the order of the file).

    yes/no: the opposite word. Numeric and text: answers of the same kind, from the same group
    (question type, source dataset) first, then from any group. An item whose kind has no other
    answer in the file gets answers of the other kind, since a gold pair needs one. Never an
    answer that contains a gold answer or alias: sub-EM would score it correct. An item that has wrong answers
    already (a passages record's own rejected) keeps them.
    """
    pools = _pools(items, groups)
    return [
        item if item.wrong_answers else
        replace(item, wrong_answers=_wrong_answers(item, group, pools, random.Random(f"{seed}:{item.id}")))
        for item, group in zip(items, groups)
    ]


def _pools(items: Sequence[QAItem], groups: Sequence[str]) -> Pools:
    """Answers by (kind, group) and (kind, any group), each normalised form once, sorted so that the
    draws do not depend on the order of the file."""
    by_key: dict[tuple[str, str | None], dict[str, str]] = defaultdict(dict)
    for item, group in zip(items, groups):
        answer = item.answers[0]
        kind = answer_kind(answer)
        for key in ((kind, group), (kind, _ANY_GROUP)):
            by_key[key].setdefault(normalize_answer(answer), answer)
    return {key: [answers[norm] for norm in sorted(answers)] for key, answers in by_key.items()}


def _wrong_answers(item: QAItem, group: str, pools: Pools, rng: random.Random) -> tuple[str, ...]:
    kind = answer_kind(item.answers[0])
    if kind == "yesno":
        return (_OPPOSITE[normalize_answer(item.answers[0])],)
    other_kind = "text" if kind == "numeric" else "numeric"
    return _draw(item, _group_first(pools, kind, group), rng) or _draw(item, _group_first(pools, other_kind, group), rng)


def _group_first(pools: Pools, kind: str, group: str) -> list[list[str]]:
    return [pools.get((kind, group), []), pools.get((kind, _ANY_GROUP), [])]


def _draw(item: QAItem, pools: list[list[str]], rng: random.Random) -> tuple[str, ...]:
    """Up to MAX_WRONG distinct answers, drawn at random from the first pool, then the next."""
    taken: dict[str, str] = {}
    for pool in pools:
        for index in rng.sample(range(len(pool)), min(len(pool), _DRAWS)):
            candidate = pool[index]
            key = normalize_answer(candidate)
            if key and key not in taken and not sub_em(candidate, item.answers):
                taken[key] = candidate
                if len(taken) == MAX_WRONG:
                    return tuple(taken.values())
    return tuple(taken.values())
