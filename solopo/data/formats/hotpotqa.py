"""HotpotQA, one JSON list in the official layout (the 2WikiMultihopQA loader reuses it):

    [{"_id": "...", "question": "...", "answer": "...", "type": "bridge", "level": "hard",
      "supporting_facts": [["TITLE", SENT_ID], ...],
      "context": [["TITLE", ["sentence", " sentence", ...]], ...]}, ...]

relevant = the paragraphs whose titles appear in supporting_facts; irrelevant = the record's
other paragraphs. The official sentences carry their own leading spaces, so they are joined
as they are. HTML entities (`&amp;`) are decoded. Wrong answers follow the question `type`.
"""
from __future__ import annotations

import json

from solopo.data.formats.passages import clean, render_passage
from solopo.data.formats.splits import Parsed, to_splits
from solopo.data.schema import QAItem, Splits
from solopo.records import Where, check, field, read_json_list, text


def load(path: str, n_val: int = 0, seed: int = 0, n_train: int | None = None) -> Splits:
    return load_layout(path, n_val, seed, n_train, sentence_separator="")


def load_layout(path: str, n_val: int, seed: int, n_train: int | None, sentence_separator: str) -> Splits:
    """A file in the HotpotQA layout, whose sentences are joined with ``sentence_separator``."""
    parsed = [parse_record(record, where, sentence_separator) for where, record in read_json_list(path)]
    return to_splits(parsed, path, n_val, seed, n_train)


def parse_record(record: dict, where: Where, sentence_separator: str) -> Parsed:
    paragraphs = _context(record, where, sentence_separator)
    supporting = _supporting_titles(record, where, {title for title, _ in paragraphs})
    item = QAItem(
        id=text(record, "_id", where),
        question=clean(text(record, "question", where)),
        answers=(clean(text(record, "answer", where)),),
        relevant=tuple(passage for title, passage in paragraphs if title in supporting),
        irrelevant=tuple(passage for title, passage in paragraphs if title not in supporting),
    )
    return Parsed(item=item, group=field(record, "type", str, where, default=""),
                  passages=tuple(passage for _, passage in paragraphs), where=where)


def _context(record: dict, where: Where, sentence_separator: str) -> list[tuple[str, str]]:
    """(clean title, rendered passage) for each [title, [sentences]] of the context."""
    paragraphs = []
    for index, entry in enumerate(field(record, "context", list, where)):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and all(isinstance(s, str) for s in entry[1])):
            raise where.error(f"expected [title, [sentences]], got {_excerpt(entry)}", f"context[{index}]")
        title, sentences = entry
        paragraphs.append((clean(title), render_passage(title, sentence_separator.join(sentences))))
    return paragraphs


def _supporting_titles(record: dict, where: Where, context_titles: set[str]) -> set[str]:
    facts = field(record, "supporting_facts", list, where)
    if not facts:
        raise where.error("empty list: no supporting paragraph, so the evidence is unknown", "supporting_facts")
    titles = set()
    for index, fact in enumerate(facts):
        label = f"supporting_facts[{index}]"
        # The sentence index is not checked against the paragraph: the official train set has a few
        # that point past the end, and only the title is used.
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)):
            raise where.error(f"expected [title, sentence index], got {_excerpt(fact)}", label)
        check(fact[1], int, label + "[1]", where)
        if clean(fact[0]) not in context_titles:
            raise where.error(f"title {clean(fact[0])!r} is not in the context", label)
        titles.add(clean(fact[0]))
    return titles


def _excerpt(value: object, width: int = 60) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= width else shown[: width - 3] + "..."
