"""The item and pair records every data source is mapped to."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


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
    """Train, validation and test items, and the pools of passages that lengthen their long contexts.

    distractors:      passages of other items (RULER-style) that pad x_long: the training pool, and the pool
                      of val and test where they have none of their own; an item never draws its own
                      relevant passages
    val_distractors:  the validation items' own pool, for sources that build each split from a separate
                      world (the built-in QA data), so no split's passages pad another's contexts;
                      empty: validation draws from distractors
    test_distractors: the test items' own pool, likewise
    skipped:          records of the source left out while loading, by reason (e.g. {"unanswerable": 3}), so that
                      the run can report them
    """

    train: list[QAItem | PreferenceExample]  # items to build pairs from, or ready-made pairs (one kind per split)
    val: list[QAItem | PreferenceExample]
    distractors: tuple[str, ...] = ()
    test: list[QAItem | PreferenceExample] = field(default_factory=list)
    val_distractors: tuple[str, ...] = ()
    test_distractors: tuple[str, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One chat message of a prompt; the model's chat template renders it."""

    role: str  # system | user | assistant (earlier turns of a conversation), or a role the template knows
    content: str


# A prompt: one user message (the built contexts: passages, then the instruction), or a conversation that ends
# where the assistant's response begins (conversational preference data, system prompts included).
Prompt = Union[str, tuple[Turn, ...]]


def prompt_text(prompt: Prompt) -> str:
    """The words of a prompt, messages joined by blank lines: for lengths in messages and for base models."""
    return prompt if isinstance(prompt, str) else "\n\n".join(turn.content for turn in prompt)


@dataclass(frozen=True)
class PreferenceExample:
    """A training record: one preference pair under a short and a long context.

    prompt_short / prompt_long are the prompts (a user message: passages, then the instruction; or a conversation);
    evidence_depths gives, for each relevant passage, its relative position in x_long (0 = start); place, where a
    pairs file holds the record ("pairs.jsonl line 4"), for the messages about it once it is read (empty for pairs
    built from items).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    prompt_short: Prompt
    prompt_long: Prompt
    chosen: str
    rejected: str
    evidence_depths: tuple[float, ...] = field(default=())
    place: str = field(default="", compare=False)
