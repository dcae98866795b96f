"""Short and long contexts from one item: x_short = [c_rel; I], x_long = [c_rel + c_irr; I]
(optionally x_short = [c_rel + a few c_irr; I], for evidence much shorter than the paper's)."""
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
TOLERANCE = 0.02  # x_long (and x_short with short_len) land within this fraction of their length when the passages suffice


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
    depth: float | None = None, template: str = "direct", short_len: int | None = None,
    frame: Callable[[list[str]], str] | None = None,
) -> Contexts:
    """x_short holds the evidence (shuffled); x_long buries it among irrelevant passages (the
    item's own, then draws from the shared ``pool``): whole passages while they fit, then the start of
    the next one, cut at a word boundary, for what is left. x_long thus lands within TOLERANCE of
    ``long_len`` tokens; the evidence is never cut. The relevant passages go to random depths, or, with
    ``depth`` in [0, 1], together as one block at that relative depth (0 = first, 1 = just before the
    question), as evaluation by depth needs.

    With ``short_len``, x_short also holds irrelevant passages, up to about short_len tokens, with the
    evidence at random places among them (for data whose evidence alone is far shorter than the paper's
    ~1.1K-token x_short). x_long then holds every passage of x_short, in the same order, among further
    irrelevant passages: x_short is a subsequence of x_long, so what x_long adds is irrelevant text only and
    the SoLo-RA gap measures that alone (distinct distractors would also change what the model reads).
    The evidence alone longer than short_len gets no distractors. None: x_short is the evidence alone.

    ``frame`` turns a context's passages into the prompt text whose tokens are counted: by default the passages,
    then the ``template``'s instruction with the question (``render``); the triplet builder (solopo.data.build)
    passes the text of a user's own prompt around its context instead.

    Raises ValueError when the passages available cannot reach short_len or long_len.
    """
    frame = frame or (lambda passages: render(passages, item.question, template))
    relevant = list(item.relevant)
    rng.shuffle(relevant)
    if short_len is not None and short_len >= long_len:
        raise ValueError(f"item {item.id}: short_len={short_len} must be below long_len={long_len}")
    kept = relevant  # x_short's passages, which x_long keeps in this order
    short = frame(kept)
    short_tokens = count_tokens(short)
    if long_len < short_tokens:
        raise ValueError(f"item {item.id}: long_len={long_len} is shorter than its short context "
                         f"({short_tokens} tokens)")
    candidates = _candidates(item, pool, long_len, rng)
    cost = _passage_cost(count_tokens, relevant, candidates)
    if short_len is not None:
        short_fillers, missing = _fill(candidates, short_len - short_tokens, cost)
        if missing > TOLERANCE * short_len:
            raise ValueError(f"item {item.id}: its {len(candidates)} irrelevant passages cannot fill {short_len} tokens")
        kept = _interleave(short_fillers, relevant, _random_positions(rng, len(short_fillers), len(relevant)))
        candidates = candidates[len(short_fillers):]  # a passage cut to end x_short is not used again
        short = frame(kept)
        short_tokens = count_tokens(short)
    fillers, missing = _fill(candidates, long_len - short_tokens, cost)
    if missing > TOLERANCE * long_len:
        raise ValueError(f"item {item.id}: its {len(candidates)} irrelevant passages cannot fill {long_len} tokens")

    passages, positions = _place(fillers, kept, depth, rng)
    long = frame(passages)
    if any(p not in long or p not in short for p in relevant):  # cannot happen by construction; a guard against future edits
        raise AssertionError(f"item {item.id}: evidence missing from x_short or x_long")
    denom = max(len(passages) - 1, 1)
    evidence = set(relevant)
    return Contexts(short=short, long=long,
                    evidence_depths=tuple(p / denom for p, passage in zip(positions, kept) if passage in evidence))


def _place(fillers: list[str], kept: list[str], depth: float | None,
           rng: random.Random) -> tuple[list[str], list[int]]:
    """x_long's passages and the positions of the kept ones: at random places among the fillers (in their order), or
    together as one block at relative ``depth``."""
    if depth is None:
        positions = _random_positions(rng, len(fillers), len(kept))
    else:
        first = round(depth * len(fillers))  # the block starts after this many fillers
        positions = list(range(first, first + len(kept)))
    return _interleave(fillers, kept, positions), positions


def _random_positions(rng: random.Random, n_fillers: int, n_kept: int) -> list[int]:
    """Sorted random indices for n_kept passages among n_fillers others (the kept ones keep their order)."""
    return sorted(rng.sample(range(n_fillers + n_kept), n_kept))


def _interleave(fillers: list[str], kept: list[str], positions: list[int]) -> list[str]:
    passages = list(fillers)
    for position, passage in zip(positions, kept):
        passages.insert(position, passage)
    return passages


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
