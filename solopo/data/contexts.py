"""Short and long contexts from one item: x_short = [c_rel; I], x_long = [c_rel + c_irr; I]."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from solopo.data.schema import QAItem

INSTRUCTION = "Answer the question using the documents above. Reply with the answer only.\nQuestion: {question}"
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Contexts:
    short: str
    long: str
    evidence_depths: tuple[float, ...]  # relative position of each relevant passage in x_long


def render(passages: list[str], question: str) -> str:
    return SEPARATOR.join(passages + [INSTRUCTION.format(question=question)])


def build_contexts(
    item: QAItem, long_len: int, count_tokens: Callable[[str], int], rng: random.Random, pool: Sequence[str] = ()
) -> Contexts:
    """x_short holds the evidence only (shuffled); x_long buries it at random depths among
    irrelevant passages (the item's own, then draws from the shared ``pool``), added until
    x_long reaches about ``long_len`` tokens.

    Raises ValueError when the passages available cannot reach long_len.
    """
    relevant = list(item.relevant)
    rng.shuffle(relevant)
    short = render(relevant, item.question)

    budget = long_len - count_tokens(short)
    if budget < 0:
        raise ValueError(f"item {item.id}: long_len={long_len} is shorter than its short context ({long_len - budget} tokens)")
    candidates = _candidates(item, pool, long_len, rng)
    fillers: list[str] = []
    sep_tokens = count_tokens(SEPARATOR)
    for passage in candidates:
        if budget <= 0:
            break
        cost = count_tokens(passage) + sep_tokens
        if cost < 2 * budget:  # adding it lands closer to the target than leaving it out
            fillers.append(passage)
            budget -= cost
    if len(fillers) == len(candidates) and budget > 0.05 * long_len:
        raise ValueError(f"item {item.id}: its {len(candidates)} irrelevant passages cannot fill {long_len} tokens")

    positions = sorted(rng.sample(range(len(fillers) + len(relevant)), len(relevant)))
    passages = list(fillers)
    for position, passage in zip(positions, relevant):
        passages.insert(position, passage)
    long = render(passages, item.question)
    missing = [p for p in relevant if p not in long]
    if missing:  # cannot happen by construction; a guard against future edits of the builder
        raise AssertionError(f"item {item.id}: evidence missing from x_long")
    denom = max(len(passages) - 1, 1)
    return Contexts(short=short, long=long, evidence_depths=tuple(p / denom for p in positions))


def _candidates(item: QAItem, pool: Sequence[str], long_len: int, rng: random.Random) -> list[str]:
    """The item's own irrelevant passages (shuffled), then a random draw from the shared pool.

    The draw is bounded (passages hold at least a few tokens each) so a pool of 100k passages
    costs O(long_len) per item, not O(pool).
    """
    own = list(item.irrelevant)
    rng.shuffle(own)
    taken = set(item.relevant) | set(own)  # the pool holds every passage, these ones too
    draw = rng.sample(range(len(pool)), min(len(pool), max(64, long_len // 4)))
    return own + [pool[i] for i in draw if pool[i] not in taken]
