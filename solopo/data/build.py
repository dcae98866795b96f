"""SoLoPO triplets from short-context preference data: what ``python -m solopo.build`` (solopo-build) writes.

Each record of a preference set whose prompt holds its context (any format ``data=pairs`` reads that gives one prompt:
TRL's, LLaMA-Factory's, schema B) becomes one schema A record:

    prompt_short = the prompt as it was (its context, then or around it the rest: the question, the instruction)
    prompt_long  = the same prompt, its context buried among distractor passages up to ``long_len`` tokens
    chosen, rejected, id, question, answers as they were; evidence_depths where the context landed in x_long

x_long is built by solopo.data.contexts.build_contexts, as the built-in data's is: the context is the evidence,
verbatim and whole, at a chosen or random depth; whole distractor passages, then the start of one cut at a word
boundary, fill the rest. The preferences were judged on the short context, as SoLoPO's on-policy pairs are.

The context of a record is found in one of two ways:

- marked (default): between two markers in the prompt, ``<context>`` and ``</context>`` unless ``markers`` says
  otherwise; in a conversation, in the one message that holds them. The markers are dropped unless ``keep_markers``.
- given: a column of the record (``context``), put before the prompt's text (its last user message in a
  conversation) with a blank line between, as the built-in prompts put their passages before the instruction.

The distractors come from a corpus, one text column of any container solopo.data.formats.source reads, or, without
one, from the other records' contexts (RULER-style).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from solopo.data.contexts import SEPARATOR, build_contexts
from solopo.data.formats import pairs
from solopo.records import DataFileError, Where, check, check_unique_ids, text
from solopo.data.formats.passages import dedupe
from solopo.data.formats.source import open_source
from solopo.data.schema import PreferenceExample, Prompt, QAItem, Turn
from solopo.settings.fields import flag, number, refuse, shown

MARKERS = ("<context>", "</context>")


def _name(key: str, value: object, optional: bool = False) -> list[str]:
    """A path or column name: a non-blank string (or null with ``optional``)."""
    if (value is None and optional) or (isinstance(value, str) and value.strip()):
        return []
    return [f"{key}={shown(value)}: must be a file, folder or column name{' or null' if optional else ''}"]


@dataclass(frozen=True)
class InputSettings:
    """The short-context preference set.

    path:         a file or folder ``data=pairs`` reads, in a format that gives one prompt per record
    split, name:  a dataset's split and config, as data.split and data.name
    context:      the column holding each record's context; None: the context is marked in the prompt
    markers:      the start and end of a marked context
    keep_markers: keep the markers in both prompts (when they are part of its wording, e.g. <document> tags)
    """

    path: str
    split: Optional[str] = None
    name: Optional[str] = None
    context: Optional[str] = None
    markers: tuple[str, str] = MARKERS
    keep_markers: bool = False

    def __post_init__(self) -> None:
        markers = self.markers
        problems = _name("path", self.path) + _name("context", self.context, optional=True)
        if not (isinstance(markers, (list, tuple)) and len(markers) == 2
                and all(isinstance(m, str) and m.strip() for m in markers)):
            problems.append(f"markers={shown(markers)}: must be two non-blank strings, e.g. [<context>,</context>]")
        refuse(problems + flag("keep_markers", self.keep_markers))
        object.__setattr__(self, "markers", tuple(markers))


@dataclass(frozen=True)
class CorpusSettings:
    """The distractor passages: the ``column`` of every record of ``path``; None: the other records' contexts."""

    path: Optional[str] = None
    column: str = "text"
    split: Optional[str] = None
    name: Optional[str] = None

    def __post_init__(self) -> None:
        refuse(_name("path", self.path, optional=True) + _name("column", self.column))


@dataclass(frozen=True)
class BuildSettings:
    """long_len: tokens of x_long's prompt text (the message holding the context, without the chat template), as
                 data.long_len counts them for the built-in data
    depths:      relative depths of the context in x_long (0: first, 1: last before the rest of the prompt) that the
                 records take in turn (record i: depths[i % len(depths)]); None: a random depth per record
    seed:        each record's draws come from the seed and its id, so they do not depend on the order of the file
    output:      the schema A file written, JSON Lines
    """

    output: str
    long_len: int = 4096
    depths: Optional[tuple[float, ...]] = None
    seed: int = 0

    def __post_init__(self) -> None:
        depths = self.depths
        problems = number("long_len", self.long_len, 1, integer=True) + number("seed", self.seed, integer=True)
        if not (isinstance(self.output, str) and self.output.endswith(".jsonl")):
            problems.append(f"output={shown(self.output)}: must be a .jsonl file (the builder writes JSON Lines)")
        if depths is not None and not (isinstance(depths, (list, tuple)) and depths
                                       and not any(number("", d, 0, 1) for d in depths)):
            problems.append(f"depths={shown(depths)}: must be null or a list of numbers in [0, 1], e.g. [0,0.5,1]")
        refuse(problems)
        if depths is not None:
            object.__setattr__(self, "depths", tuple(depths))


@dataclass(frozen=True)
class Cut:
    """A prompt cut around its context: the text holding it is ``before + context + after``, the whole prompt (a text
    prompt: ``turn`` None) or the content of message ``turn``."""

    prompt: Prompt
    turn: Optional[int]
    before: str
    context: str
    after: str

    def text(self, passages: list[str]) -> str:
        """The text with ``passages``, joined as the context builder joins them, in the context's place."""
        return self.before + SEPARATOR.join(passages) + self.after

    def prompt_with(self, text: str) -> Prompt:
        """The prompt with ``text`` for the text that held the context (every other message as it was)."""
        if self.turn is None:
            return text
        turns = list(self.prompt)
        turns[self.turn] = Turn(turns[self.turn].role, text)
        return tuple(turns)


def marked(prompt: Prompt, markers: tuple[str, str], keep: bool, where: Where) -> Cut:
    """The context between ``markers``: one start marker in the whole prompt, and an end marker after it."""
    start_marker, end_marker = markers
    texts = [prompt] if isinstance(prompt, str) else [turn.content for turn in prompt]
    found = sum(text.count(start_marker) for text in texts)
    if found != 1:
        raise where.error(f"its prompt holds {found} {start_marker} markers; mark one context, "
                          f"{start_marker}...{end_marker} (input.markers), or give it in a column (input.context)")
    turn = next(index for index, text in enumerate(texts) if start_marker in text)
    held = texts[turn]
    start = held.index(start_marker) + len(start_marker)
    end = held.find(end_marker, start)
    if end < 0:
        raise where.error(f"its prompt has {start_marker} but no {end_marker} after it")
    if not held[start:end].strip():
        raise where.error(f"its marked context ({start_marker}...{end_marker}) is empty")
    before = held[:start] if keep else held[: start - len(start_marker)]
    after = held[end:] if keep else held[end + len(end_marker):]
    return Cut(prompt, None if isinstance(prompt, str) else turn, before, held[start:end], after)


def given(prompt: Prompt, context: str, where: Where) -> Cut:
    """The context of a column, before the text of the prompt (of its last user message)."""
    if isinstance(prompt, str):
        return Cut(prompt, None, "", context, SEPARATOR + prompt)
    users = [index for index, turn in enumerate(prompt) if turn.role == "user"]
    if not users:
        raise where.error("its prompt has no user message to put the context in")
    return Cut(prompt, users[-1], "", context, SEPARATOR + prompt[users[-1]].content)


def read_input(settings: InputSettings) -> list[tuple[Where, PreferenceExample, Cut]]:
    """Every record of the preference set, read as ``data=pairs`` reads it, with its prompt cut around its context."""
    source = open_source(settings.path, settings.split, settings.name)
    layout, records = pairs.Layout(read=(settings.context,) if settings.context else ()), []
    for where, record in source.records:
        example = layout.parse(record, where, source.mapping)
        if not isinstance(example, PreferenceExample) or example.prompt_short != example.prompt_long:
            raise where.error("already has a short and a long context (schema A or A'); data=pairs reads it as it is")
        cut = (given(example.prompt_short, text(record, settings.context, where), where) if settings.context
               else marked(example.prompt_short, settings.markers, settings.keep_markers, where))
        records.append((where, example, cut))
    if not records:
        raise DataFileError(f"{settings.path}: no records")
    check_unique_ids((where, example.id) for where, example, _ in records)
    return records


def read_corpus(settings: CorpusSettings) -> tuple[tuple[str, ...], int]:
    """The distinct passages of the corpus's column, and the number of its rows left out as blank (null or empty)."""
    passages, blank = [], 0
    for where, record in open_source(settings.path, settings.split, settings.name).records:
        if settings.column not in record:
            raise where.error(f"missing; the record has {', '.join(map(repr, record)) or 'no fields'} "
                              "(set corpus.column)", settings.column)
        value = record[settings.column]
        if value is None or (isinstance(value, str) and not value.strip()):
            blank += 1
            continue
        passages.append(check(value, str, settings.column, where).strip())
    if not passages:
        raise DataFileError(f"{settings.path}: no text in column {settings.column!r}")
    return dedupe(passages), blank


def other_contexts(records: Sequence[tuple[Where, PreferenceExample, Cut]]) -> tuple[str, ...]:
    """The pool without a corpus: every record's context (the context builder never draws a record's own)."""
    return dedupe(cut.context for _, _, cut in records)


def triplets(records: Sequence[tuple[Where, PreferenceExample, Cut]], pool: Sequence[str],
             count_tokens: Callable[[str], int], settings: BuildSettings) -> Iterator[dict]:
    """The schema A record of each input record, in order (see the module's docstring)."""
    for index, (where, example, cut) in enumerate(records):
        depth = settings.depths[index % len(settings.depths)] if settings.depths else None
        item = QAItem(example.id, example.question, example.answers, relevant=(cut.context,))
        try:
            rng = random.Random(f"{settings.seed}:{item.id}")
            contexts = build_contexts(item, settings.long_len, count_tokens, rng, pool, depth=depth, frame=cut.text)
        except ValueError as err:
            raise where.error(f"{err}; lower long_len or give more distractors (corpus.path)") from None
        record = {"id": example.id, "prompt_short": _json(cut.prompt_with(contexts.short)),
                  "prompt_long": _json(cut.prompt_with(contexts.long)), "chosen": example.chosen,
                  "rejected": example.rejected}
        record.update({"question": example.question} if example.question else {})
        record.update({"answers": list(example.answers)} if example.answers else {})
        yield {**record, "evidence_depths": list(contexts.evidence_depths)}


def _json(prompt: Prompt) -> str | list[dict]:
    """A prompt as schema A writes it: text, or messages as {role, content}."""
    return prompt if isinstance(prompt, str) else [{"role": turn.role, "content": turn.content} for turn in prompt]
