"""Preference pairs in solopo's schemas and the ecosystem's, from any container solopo.data.formats.source reads.
A file keeps to one format, told by the keys of each record (a LLaMA-Factory ``dataset_info.json`` entry decides
for the file):

| format                 | keys                                        | gives                                      |
|------------------------|---------------------------------------------|--------------------------------------------|
| A: SoLoPO pairs        | prompt_short, prompt_long, chosen, rejected | pairs, contexts as written                 |
| A': passages           | question, relevant, answers or chosen       | items; solopo builds x_short and x_long    |
| B: TRL explicit prompt | prompt, chosen, rejected (text or messages) | plain PO pairs (x_short = x_long)          |
| TRL implicit prompt    | chosen, rejected (text or messages)         | plain PO pairs, prompt = the shared start  |
| LLaMA-Factory sharegpt | conversations (or mapped), chosen, rejected | plain PO pairs                             |
| LLaMA-Factory alpaca   | instruction, input, chosen, rejected        | plain PO pairs                             |

A, B and the ecosystem's formats may also carry id, question and answers; A' irrelevant, rejected and id. A record's
format is given by the keys only it has (the first column above; chosen and rejected alone: TRL's implicit prompt),
and a record with those of two formats is refused (see ``format_of``), as is a text column no reader takes beside
an implicit prompt's chosen and rejected (see ``_check_implicit_reads_all``); the layouts of the ecosystem's formats
are in solopo.data.formats.trl and solopo.data.formats.llama_factory. Prompts and responses are kept exactly as
written (messages for the chat template); A' text is stripped. A' gives QAItem records whose answers default to
(chosen,) and whose wrong_answers are (rejected,), or drawn from the file's other answers where a record gives no
rejected (sampled pairs need only the answers); every passage of the file joins the distractor pool.
A file also gives each prompt and response field in one form, text or messages (a list of them, or one), and a
record its chosen and rejected (A: its prompt_short and prompt_long) in one form (see ``Layout``).
Ids are unique within a file; chosen and rejected must differ beyond whitespace; an A' passage is relevant or
irrelevant, not both; A records whose prompt_long is no longer than their prompt_short are counted in the log.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from solopo.data.formats import llama_factory, trl
from solopo.data.formats.chat import prompt, response
from solopo.data.formats.passages import dedupe
from solopo.data.formats.source import open_source
from solopo.data.formats.splits import split_items
from solopo.data.formats.wrong_answers import add_wrong_answers
from solopo.data.schema import PreferenceExample, Prompt, QAItem, Splits, prompt_text
from solopo.records import DataFileError, Where, check_unique_ids, field, required, text, text_list

log = logging.getLogger(__name__)
_FORMAT_KEYS = {"A": "prompt_short, prompt_long", "A'": "question, relevant", "B": "prompt",
                "sharegpt": "conversations", "alpaca": "instruction", "implicit": "chosen, rejected only"}


def load(path: str, n_val: int = 0, seed: int = 0, n_train: int | None = None, split: str | None = None,
         name: str | None = None) -> Splits:
    """The pairs (or A' items) of ``path``, split; ``split`` and ``name`` pick a dataset's split and config."""
    source = open_source(path, split, name)
    layout, rows, places = Layout(), [], []
    for where, record in source.records:
        rows.append(layout.parse(record, where, source.mapping))
        places.append(where)
    if layout.first is None:
        raise DataFileError(f"{path}: no records")
    check_unique_ids(zip(places, (row.id for row in rows)))
    if layout.schema == "A":
        _count_long_not_longer(rows, places, path)
    if layout.schema == "A'":  # a record without a rejected answer: wrong ones drawn from the file's other answers
        rows = add_wrong_answers(rows, [""] * len(rows), seed)
    pool = dedupe(passage for row in rows if isinstance(row, QAItem) for passage in row.relevant + row.irrelevant)
    return split_items(rows, pool, path, n_val, seed, n_train)


class Layout:
    """What a file's first record sets and every other keeps: its schema, and the form (text, or messages) of each
    prompt and response field. Rows of both forms are two sets merged or a conversion stopped part way: TRL tells a
    dataset's form from its first row, and datasets cannot load a column holding both."""

    def __init__(self, read: tuple[str, ...] = ()) -> None:
        self.read = read  # columns the caller reads itself (solopo-build's input.context)
        self.first: Where | None = None
        self.schema = ""
        self.shapes: dict[str, str] = {}

    def parse(self, record: dict, where: Where, mapping: dict | None = None) -> QAItem | PreferenceExample:
        """The record in its format (``format_of``), if it keeps to the first record's schema and forms. Its fields are
        read first, so that messages written out as text are named as such, not as text."""
        found = format_of(record, where, mapping)
        if self.first is not None and found != self.schema:
            raise where.error(f"schema {found} ({_FORMAT_KEYS[found]}), but {self.first.place} uses schema "
                              f"{self.schema} ({_FORMAT_KEYS[self.schema]}); a file uses one schema throughout")
        if found == "implicit":
            _check_implicit_reads_all(record, where, self.read)
        row, shapes = _PARSERS[found](record, where, mapping), _shapes(record, where)
        if self.first is None:
            self.first, self.schema, self.shapes = where, found, shapes
        for key, shape in shapes.items():
            if (shape == _TEXT) != (self.shapes.get(key, shape) == _TEXT):
                raise where.error(f"{shape}, but {self.first.place}'s is {self.shapes[key]}; use one form, text or "
                                  "messages, in every record", key)
        return row


# The keys only one format has: a record with those of two is refused, not read as whichever comes first
_OWN_KEYS = {"A": ("prompt_short", "prompt_long"), "A'": ("relevant",), "B": ("prompt",),
             "sharegpt": ("conversations",), "alpaca": ("instruction",)}
# The keys that decide a record's format (a near miss of one, 'Prompt' or 'prompt ', is named, not read as another)
DECIDING_KEYS = (*(key for keys in _OWN_KEYS.values() for key in keys), "chosen", "rejected")


def format_of(record: dict, where: Where, mapping: dict | None = None) -> str:
    if mapping is not None:  # a LLaMA-Factory dataset names its columns
        return "sharegpt" if llama_factory.layout(mapping) == "sharegpt" else "alpaca"
    for key in record:
        near = next((k for k in DECIDING_KEYS if isinstance(key, str) and key != k and key.strip().lower() == k), None)
        if near is not None and near not in record:
            raise where.error(f"key {key!r} is not {near!r}: keys are exact (lower case, no spaces)")
    found = {fmt: [key for key in keys if key in record] for fmt, keys in _OWN_KEYS.items()}
    found = {fmt: keys for fmt, keys in found.items() if keys}
    if len(found) > 1:  # {"prompt", "chosen", "rejected", "relevant"}: a TRL record, or A' without its question?
        named = ", ".join(f"{', '.join(map(repr, keys))} ({fmt})" for fmt, keys in found.items())
        raise where.error(f"has the keys of {len(found)} schemas, {named}: a record keeps to one (rename the others' "
                          "fields)")
    if found:
        return next(iter(found))
    if "chosen" in record and "rejected" in record:
        if "messages" in record and isinstance(record["chosen"], dict):  # LLaMA-Factory's sharegpt, OpenAI-style:
            # its messages column is named by an entry; read as TRL's, its one-message responses are no TRL response
            raise where.error("has 'messages' beside chosen and rejected: LLaMA-Factory's sharegpt layout with a "
                              "messages column is read through its dataset_info.json entry (\"columns\": "
                              "{\"messages\": \"messages\", ...}; data.path=<its folder> data.name=<entry>); or "
                              "rename the column 'conversations'")
        return "implicit"
    if len(record) == 1:  # {"data": [...]}: the records under a key
        ((wrapped, inner),) = record.items()
        if isinstance(inner, list) and inner and isinstance(inner[0], dict):
            raise where.error(f"matches no schema: its {wrapped!r} holds a list of {len(inner)} objects; a file "
                              "holds its records as a JSON list or one per line (JSON lines), not under a key")
    raise where.error("matches no schema: expected prompt_short and prompt_long (A), relevant (A'), prompt (B, TRL), "
                      "conversations or instruction (LLaMA-Factory), or chosen and rejected (TRL implicit prompt); see "
                      "solopo/data/formats/pairs.py")


# The annotations every format's reader takes beside its prompt and responses (not into the prompt)
_ANNOTATIONS = ("id", "question", "answers")


def _check_implicit_reads_all(record: dict, where: Where, read: tuple[str, ...]) -> None:
    """TRL's implicit prompt is the only format whose prompt is no column: it is what chosen and rejected begin with
    alike. A text column beside them that no reader takes ({"context", "question", "chosen", "rejected"}) is most
    likely the prompt's content in a layout of its own, which read as an implicit prompt would train on the answers'
    shared first words ("The answer is") with no word of it: refused, naming the columns and the layouts that read
    them. Numbers, flags and nulls (scores, sources' ids) are labels, not content, and pass."""
    unread = [key for key, value in record.items() if key not in ("chosen", "rejected", *_ANNOTATIONS, *read)
              and (isinstance(value, (list, dict)) or (isinstance(value, str) and value.strip()))]
    if unread:
        label = " ('question' it keeps only as a label)" if "question" in record else ""
        raise where.error(f"has {', '.join(map(repr, unread))} beside chosen and rejected, which no reader of TRL's "
                          f"implicit prompt (the words both begin with) takes into the prompt{label}; give the whole "
                          "prompt in 'prompt' (TRL standard), or the question in 'question' and the passages as a list "
                          "in 'relevant' (schema A': solopo builds the prompts)")


_TEXT = "text"
# The fields a record may give as text or as messages, and the pairs of them one record gives in one form
_FORM_KEYS = ("prompt", "prompt_short", "prompt_long", "chosen", "rejected")
_SAME_FORM = (("chosen", "rejected"), ("prompt_short", "prompt_long"))


def _shapes(record: dict, where: Where) -> dict[str, str]:
    """Each of the record's prompt and response fields as text, a list of messages or a message. A text prompt beside
    messages for chosen and rejected is a layout TRL reads (solopo.data.formats.trl); a text chosen beside a rejected
    of messages is not: it is refused, as is an A prompt_short and prompt_long of different forms."""
    shapes = {key: shape for key in _FORM_KEYS if (shape := _shape(record.get(key))) is not None}
    for key, other in _SAME_FORM:
        if key in shapes and other in shapes and (shapes[key] == _TEXT) != (shapes[other] == _TEXT):
            raise where.error(f"{shapes[other]}, but {key!r} is {shapes[key]}; give {key} and {other} in one form, "
                              "text or messages", other)
    return shapes


def _shape(value: object) -> str | None:
    """None for a value the parsers refuse for its type, in their own words."""
    if isinstance(value, str):
        return _TEXT
    if isinstance(value, dict):
        return "a message"
    if isinstance(value, list) and value and all(isinstance(message, dict) for message in value):
        return "a list of messages"
    return None


def _schema_a(record: dict, where: Where, mapping: dict | None) -> PreferenceExample:
    return _example(record, where, prompt(required(record, "prompt_short", where), "prompt_short", where),
                    prompt(required(record, "prompt_long", where), "prompt_long", where),
                    response(required(record, "chosen", where), "chosen", where),
                    response(required(record, "rejected", where), "rejected", where))


def _plain(convert: Callable[..., tuple[Prompt, str, str]]) -> Callable[[dict, Where, dict | None], PreferenceExample]:
    """A parser of a format that gives one prompt: plain PO, x_short = x_long."""
    def parse(record: dict, where: Where, mapping: dict | None) -> PreferenceExample:
        shared, chosen, rejected = convert(record, where, mapping) if mapping is not None else convert(record, where)
        return _example(record, where, shared, shared, chosen, rejected)
    return parse


def _example(record: dict, where: Where, prompt_short: Prompt, prompt_long: Prompt, chosen: str,
             rejected: str) -> PreferenceExample:
    _check_pair(chosen, rejected, where)
    return PreferenceExample(
        id=_id(record, where), question=field(record, "question", str, where, default=""),
        answers=tuple(text_list(record, "answers", where, required=False)),
        prompt_short=prompt_short, prompt_long=prompt_long, chosen=chosen, rejected=rejected,
        place=f"{where.path} {where.place}",
    )


def _schema_a_passages(record: dict, where: Where, mapping: dict | None) -> QAItem:
    """A QA record: its answers are ``answers``, else (chosen,); its wrong answer its rejected, where it gives one
    (the others are drawn from the file's answers in ``load``). Sampled pairs need neither chosen nor rejected, only answers."""
    answers = tuple(text_list(record, "answers", where, required=False))
    if record.get("chosen") is None and not answers:  # "answers": [] is there, and empty
        problem = "required but missing" if record.get("answers") is None else "an empty list"
        raise where.error(f"{problem}: a passages record (schema A') gives its answer as 'answers' (a list) or "
                          "'chosen'", "answers")
    chosen = text(record, "chosen", where) if record.get("chosen") is not None else answers[0]
    rejected = text(record, "rejected", where) if record.get("rejected") is not None else None
    if rejected is not None:
        _check_pair(chosen, rejected, where)
    relevant = tuple(text_list(record, "relevant", where))
    irrelevant = tuple(text_list(record, "irrelevant", where, required=False))
    for index, passage in enumerate(irrelevant):  # x_long would hold it twice, once as the evidence
        if passage in relevant:
            raise where.error(f"the same passage as relevant[{relevant.index(passage)}]; a passage is evidence "
                              "or irrelevant, not both", f"irrelevant[{index}]")
    return QAItem(
        id=_id(record, where), question=text(record, "question", where),
        answers=answers or (chosen,), relevant=relevant, irrelevant=irrelevant,
        wrong_answers=(rejected,) if rejected is not None else (),
    )


def _count_long_not_longer(rows: list[PreferenceExample], places: list[Where], path: str) -> None:
    """Schema A: a prompt_long no longer than its prompt_short (fields swapped, or a long context never filled)
    leaves SoLo-RA nothing to align. The pair still trains the PO loss, so it is counted in the log, not refused."""
    found = [where.place for where, row in zip(places, rows)
             if len(prompt_text(row.prompt_long)) <= len(prompt_text(row.prompt_short))]
    if found:
        log.warning("%s: %d of %d records have a prompt_long no longer than their prompt_short (%s%s); SoLo-RA has "
                    "no long context to align there", path, len(found), len(rows), ", ".join(found[:3]),
                    ", ..." if len(found) > 3 else "")


def _check_pair(chosen: str, rejected: str, where: Where) -> None:
    if chosen.split() == rejected.split():  # the same words: a pair that teaches only spacing
        raise where.error("the same as 'chosen' but for whitespace: the pair prefers nothing"
                          if chosen != rejected else "the same as 'chosen': the pair prefers nothing", "rejected")


def _id(record: dict, where: Where) -> str:
    """The record's id (published sets often number them: an integer is taken as its digits), else its place."""
    if isinstance(record.get("id"), int) and not isinstance(record["id"], bool):
        return str(record["id"])
    item = field(record, "id", str, where, default=f"{Path(where.path).stem}:{where.place.replace(' ', '')}")
    if not item.strip():  # an empty CSV cell, or "": an id names the item in caches, logs and tables
        raise where.error("empty", where.label("id"))
    return item


_PARSERS: dict[str, Callable[[dict, Where, dict | None], QAItem | PreferenceExample]] = {
    "A": _schema_a, "A'": _schema_a_passages, "B": _plain(trl.explicit), "implicit": _plain(trl.implicit),
    "sharegpt": _plain(llama_factory.sharegpt), "alpaca": _plain(llama_factory.alpaca),
}
