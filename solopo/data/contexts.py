"""Short and long contexts from one item: x_short = [c_rel; I], x_long = [c_rel + c_irr; I]."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from solopo.data.schema import QAItem

# The prompt template: how the instruction after the documents asks for the answer.
INSTRUCTIONS = {
    "direct": "Answer the question using the documents above. Reply with the answer only.\nQuestion: {question}",
    "cot": ("Answer the question using the documents above. Think step by step in two or three short sentences, "
            "then give the answer.\nQuestion: {question}"),
}
SEPARATOR = "\n\n"
TOLERANCE = 0.02  # x_long lands within this fraction of long_len when the passages available suffice


@dataclass(frozen=True)
class Contexts:
    short: str
    long: str
    evidence_depths: tuple[float, ...]  # relative position of each relevant passage in x_long


def render(passages: list[str], question: str, template: str = "direct") -> str:
    if template not in INSTRUCTIONS:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(INSTRUCTIONS)}")
    return SEPARATOR.join(passages + [INSTRUCTIONS[template].format(question=question)])


def build_contexts(
    item: QAItem, long_len: int, count_tokens: Callable[[str], int], rng: random.Random, pool: Sequence[str] = (),
    depth: float | None = None, template: str = "direct",
) -> Contexts:
    """x_short holds the evidence only (shuffled); x_long buries it among irrelevant passages (the
    item's own, then draws from the shared ``pool``): whole passages while they fit, then the start of
    the next one, cut at a word boundary, for what is left. x_long thus lands within TOLERANCE of
    ``long_len`` tokens; the evidence is never cut. The relevant passages go to random depths, or, with
    ``depth`` in [0, 1], together as one block at that relative depth (0 = first, 1 = just before the
    question), as evaluation by depth needs.

    Raises ValueError when the passages available cannot reach long_len.
    """
    relevant = list(item.relevant)
    rng.shuffle(relevant)
    short = render(relevant, item.question, template)
    short_tokens = count_tokens(short)
    if long_len < short_tokens:
        raise ValueError(f"item {item.id}: long_len={long_len} is shorter than its short context "
                         f"({short_tokens} tokens)")
    candidates = _candidates(item, pool, long_len, rng)
    fillers, missing = _fill(candidates, long_len - short_tokens, _passage_cost(count_tokens, relevant, candidates))
    if missing > TOLERANCE * long_len:
        raise ValueError(f"item {item.id}: its {len(candidates)} irrelevant passages cannot fill {long_len} tokens")

    if depth is None:
        positions = sorted(rng.sample(range(len(fillers) + len(relevant)), len(relevant)))
    else:
        first = round(depth * len(fillers))  # the block starts after this many fillers
        positions = list(range(first, first + len(relevant)))
    passages = list(fillers)
    for position, passage in zip(positions, relevant):
        passages.insert(position, passage)
    long = render(passages, item.question, template)
    if any(p not in long for p in relevant):  # cannot happen by construction; a guard against future edits
        raise AssertionError(f"item {item.id}: evidence missing from x_long")
    denom = max(len(passages) - 1, 1)
    return Contexts(short=short, long=long, evidence_depths=tuple(p / denom for p in positions))


def _passage_cost(count_tokens: Callable[[str], int], relevant: list[str],
                  candidates: list[str]) -> Callable[[str], int]:
    """Tokens a passage adds to a context: its own with a separator, plus what the seam with the passage
    before it costs. Tokenizers differ there (some merge the separator with a final full stop), so the
    seam is measured once, on one relevant and one candidate passage."""
    seam = 0
    if relevant and candidates:
        before, after = relevant[0], candidates[0]
        seam = count_tokens(before + SEPARATOR + after) - count_tokens(before) - count_tokens(SEPARATOR + after)
    return lambda passage: count_tokens(SEPARATOR + passage) + seam


def _fill(candidates: list[str], budget: int, cost: Callable[[str], int]) -> tuple[list[str], int]:
    """Whole candidates while they fit in ``budget`` tokens, then the start of the next one, cut to fit.
    Returns them and the tokens the candidates fell short by (0 when one had to be cut)."""
    fillers = []
    for passage in candidates:
        spent = cost(passage)
        if spent > budget:
            head = _head(passage, budget, cost)
            return fillers + [head] if head else fillers, 0
        fillers.append(passage)
        budget -= spent
    return fillers, budget


def _head(passage: str, budget: int, cost: Callable[[str], int]) -> str:
    """The longest start of ``passage`` that ends at a word boundary and costs at most ``budget``
    (binary search: the cost grows with the length)."""
    ends = [match.start() for match in re.finditer(r"\s+", passage)]
    head, low, high = "", 1, len(ends)  # head: the longest start known to fit; low, high: word counts to try
    while low <= high:
        middle = (low + high) // 2
        if cost(passage[: ends[middle - 1]]) <= budget:
            head, low = passage[: ends[middle - 1]], middle + 1
        else:
            high = middle - 1
    return head


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
