"""The item and pair records every data source is mapped to."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QAItem:
    """One question with its evidence.

    relevant:   the task-relevant passages (the evidence c_rel); they go into both contexts verbatim
    irrelevant: the item's own passages that do not answer the question (c_irr), used first to
                lengthen x_long; the split's shared distractor pool supplies the rest
    wrong_answers: plausible incorrect answers, used to make gold preference pairs
    context:    the whole long context, for sources whose evidence is not separated (LongBench);
                relevant is then empty
    """

    id: str
    question: str
    answers: tuple[str, ...]
    relevant: tuple[str, ...]
    irrelevant: tuple[str, ...] = ()
    wrong_answers: tuple[str, ...] = ()
    context: str | None = None


@dataclass(frozen=True)
class Splits:
    """Train and validation items, and the pool of passages that lengthens their long contexts.

    distractors: passages of other items (RULER-style); an item never draws its own relevant passages.
    """

    train: list[QAItem | PreferenceExample]  # items to build pairs from, or ready-made pairs (one kind per split)
    val: list[QAItem | PreferenceExample]
    distractors: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreferenceExample:
    """A training record: one preference pair under a short and a long context.

    prompt_short / prompt_long are the user messages (passages, then the instruction);
    evidence_depths gives, for each relevant passage, its relative position in x_long (0 = start).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    prompt_short: str
    prompt_long: str
    chosen: str
    rejected: str
    evidence_depths: tuple[float, ...] = field(default=())
