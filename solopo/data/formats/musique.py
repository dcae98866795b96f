"""MuSiQue, jsonl in the official layout (the paper's training data):

    {"id": "2hop__13548_13529", "question": "...", "answer": "...", "answer_aliases": ["..."],
     "answerable": true, "paragraphs": [{"idx": 0, "title": "...", "paragraph_text": "...",
     "is_supporting": true}, ...], "question_decomposition": [...]}

relevant = the supporting paragraphs, irrelevant = the record's other paragraphs (MuSiQue's own
hard distractors), answers = (answer, *answer_aliases). Unanswerable records (the "full" variant)
are skipped and counted in the log; their paragraphs still join the distractor pool.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from solopo.data.formats.passages import clean, render_passage
from solopo.data.formats.splits import Parsed, to_splits
from solopo.data.schema import QAItem, Splits
from solopo.records import Where, check, field, read_jsonl, text, text_list

log = logging.getLogger(__name__)


def load(path: str, n_val: int = 0, seed: int = 0, n_train: int | None = None) -> Splits:
    records = read_jsonl(path)
    parsed, unanswerable_passages = [], []
    for where, record in records:
        paragraphs = _paragraphs(record, where)
        if field(record, "answerable", bool, where, default=True):
            parsed.append(_parse(record, paragraphs, where))
        else:
            unanswerable_passages += [passage for passage, _ in paragraphs]
    skipped = len(records) - len(parsed)
    if skipped:
        log.warning("%s: skipped %d unanswerable record(s) of %d", path, skipped, len(records))
    splits = to_splits(parsed, path, n_val, seed, n_train, more_passages=unanswerable_passages)
    return replace(splits, skipped={"unanswerable": skipped}) if skipped else splits


def _paragraphs(record: dict, where: Where) -> list[tuple[str, bool]]:
    """Each paragraph rendered, with its is_supporting flag."""
    paragraphs = []
    for index, paragraph in enumerate(field(record, "paragraphs", list, where)):
        label = f"paragraphs[{index}]"
        check(paragraph, dict, label, where)
        inner = where.inside(label)
        passage = render_passage(field(paragraph, "title", str, inner), text(paragraph, "paragraph_text", inner))
        paragraphs.append((passage, field(paragraph, "is_supporting", bool, inner)))
    return paragraphs


def _parse(record: dict, paragraphs: list[tuple[str, bool]], where: Where) -> Parsed:
    relevant = tuple(passage for passage, supporting in paragraphs if supporting)
    if not relevant:
        raise where.error("no paragraph has is_supporting: true, so the evidence is unknown", "paragraphs")
    answers = [text(record, "answer", where)] + text_list(record, "answer_aliases", where, required=False)
    item = QAItem(
        id=text(record, "id", where),
        question=clean(text(record, "question", where)),
        answers=tuple(dict.fromkeys(map(clean, answers))),
        relevant=relevant,
        irrelevant=tuple(passage for passage, supporting in paragraphs if not supporting),
    )
    # MuSiQue has no question type: wrong answers come from any other question.
    return Parsed(item=item, group="", passages=tuple(passage for passage, _ in paragraphs), where=where)
