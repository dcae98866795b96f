"""LongBench, jsonl (one file per task in the official release):

    {"input": "QUESTION", "context": "THE WHOLE LONG CONTEXT", "answers": ["..."], "length": 9151,
     "dataset": "hotpotqa", "language": "en", "all_classes": null, "_id": "..."}

The evidence is not separated from the rest of the context, so the whole context goes into
QAItem.context and relevant is empty; there are no passages for the distractor pool. Wrong
answers come from items of the same `dataset` first.
"""
from __future__ import annotations

from solopo.data.formats.splits import Parsed, to_splits
from solopo.data.schema import QAItem, Splits
from solopo.records import Where, field, read_jsonl, text, text_list


def load(path: str, n_val: int = 0, seed: int = 0, n_train: int | None = None) -> Splits:
    parsed = [_parse(record, where) for where, record in read_jsonl(path)]
    return to_splits(parsed, path, n_val, seed, n_train)


def _parse(record: dict, where: Where) -> Parsed:
    item = QAItem(
        id=text(record, "_id", where),
        question=text(record, "input", where),
        answers=tuple(dict.fromkeys(text_list(record, "answers", where))),
        relevant=(),
        context=text(record, "context", where),
    )
    return Parsed(item=item, group=field(record, "dataset", str, where, default=""), passages=(), where=where)
