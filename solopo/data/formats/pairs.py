"""Ready-made preference pairs, jsonl; a file uses one schema throughout.

Schema A (SoLoPO pairs, contexts already built):
    {"prompt_short": "...", "prompt_long": "...", "chosen": "...", "rejected": "...",
     "id": "...", "question": "...", "answers": ["..."]}          id, question, answers optional
Schema A' (passages; solopo builds x_short and x_long from them):
    {"question": "...", "relevant": ["passage", ...], "chosen": "...", "rejected": "...",
     "irrelevant": ["passage", ...], "answers": ["..."], "id": "..."}  irrelevant, answers, id optional
Schema B (plain preference optimisation, TRL-style):
    {"prompt": "...", "chosen": "...", "rejected": "..."}         id, question, answers optional

A and B give PreferenceExample records (B: prompt_short = prompt_long = prompt); A' gives QAItem
records whose answers default to (chosen,) and whose wrong_answers are (rejected,), and every
passage of the file joins the distractor pool. The schema is told by the first record's keys:
prompt_short/prompt_long -> A, relevant -> A', prompt -> B. Prompts and responses of A and B
are kept exactly as written; A' text is stripped. Ids are unique within a file; an A' passage is
relevant or irrelevant, not both; A records whose prompt_long is no longer than their prompt_short
are counted in the log.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from solopo.data.formats.errors import Where
from solopo.data.formats.passages import dedupe
from solopo.data.formats.records import check_unique_ids, field, read_jsonl, text, text_list
from solopo.data.formats.splits import split_items
from solopo.data.schema import PreferenceExample, QAItem, Splits

log = logging.getLogger(__name__)
_SCHEMA_KEYS = {"A": "prompt_short, prompt_long", "A'": "question, relevant", "B": "prompt"}


def load(path: str, n_val: int = 0, seed: int = 0, n_train: int | None = None) -> Splits:
    records = read_jsonl(path)
    first_where, first_record = records[0]
    schema = schema_of(first_record, first_where)
    rows = []
    for where, record in records:
        found = schema_of(record, where)
        if found != schema:
            raise where.error(f"schema {found} ({_SCHEMA_KEYS[found]}), but {first_where.place} uses schema "
                              f"{schema} ({_SCHEMA_KEYS[schema]}); a file uses one schema throughout")
        rows.append(_PARSERS[schema](record, where))
    check_unique_ids((where, row.id) for (where, _), row in zip(records, rows))
    if schema == "A":
        _count_long_not_longer(rows, [where for where, _ in records], path)
    pool = dedupe(passage for row in rows if isinstance(row, QAItem) for passage in row.relevant + row.irrelevant)
    return split_items(rows, pool, path, n_val, seed, n_train)


def schema_of(record: dict, where: Where) -> str:
    if "prompt_short" in record or "prompt_long" in record:
        return "A"
    if "relevant" in record:
        return "A'"
    if "prompt" in record:
        return "B"
    raise where.error("matches no schema: expected prompt_short and prompt_long (A), relevant (A') "
                      "or prompt (B); see solopo/data/formats/pairs.py")


def _schema_a(record: dict, where: Where) -> PreferenceExample:
    return _example(record, where, text(record, "prompt_short", where, strip=False),
                    text(record, "prompt_long", where, strip=False))


def _schema_b(record: dict, where: Where) -> PreferenceExample:
    prompt = text(record, "prompt", where, strip=False)
    return _example(record, where, prompt, prompt)


def _example(record: dict, where: Where, prompt_short: str, prompt_long: str) -> PreferenceExample:
    chosen, rejected = _responses(record, where, strip=False)
    return PreferenceExample(
        id=_id(record, where), question=field(record, "question", str, where, default=""),
        answers=tuple(text_list(record, "answers", where, required=False)),
        prompt_short=prompt_short, prompt_long=prompt_long, chosen=chosen, rejected=rejected,
    )


def _schema_a_passages(record: dict, where: Where) -> QAItem:
    chosen, rejected = _responses(record, where, strip=True)
    relevant = tuple(text_list(record, "relevant", where))
    irrelevant = tuple(text_list(record, "irrelevant", where, required=False))
    for index, passage in enumerate(irrelevant):  # x_long would hold it twice, once as the evidence
        if passage in relevant:
            raise where.error(f"the same passage as relevant[{relevant.index(passage)}]; a passage is evidence "
                              "or irrelevant, not both", f"irrelevant[{index}]")
    return QAItem(
        id=_id(record, where), question=text(record, "question", where),
        answers=tuple(text_list(record, "answers", where, required=False)) or (chosen,),
        relevant=relevant, irrelevant=irrelevant, wrong_answers=(rejected,),
    )


def _count_long_not_longer(rows: list[PreferenceExample], places: list[Where], path: str) -> None:
    """Schema A: a prompt_long no longer than its prompt_short (fields swapped, or a long context never filled)
    leaves SoLo-RA nothing to align. The pair still trains the PO loss, so it is counted in the log, not refused."""
    found = [where.place for where, row in zip(places, rows) if len(row.prompt_long) <= len(row.prompt_short)]
    if found:
        log.warning("%s: %d of %d records have a prompt_long no longer than their prompt_short (%s%s); SoLo-RA has "
                    "no long context to align there", path, len(found), len(rows), ", ".join(found[:3]),
                    ", ..." if len(found) > 3 else "")


def _responses(record: dict, where: Where, strip: bool) -> tuple[str, str]:
    chosen, rejected = text(record, "chosen", where, strip), text(record, "rejected", where, strip)
    if chosen == rejected:
        raise where.error("the same as 'chosen': the pair prefers nothing", "rejected")
    return chosen, rejected


def _id(record: dict, where: Where) -> str:
    return field(record, "id", str, where, default=f"{Path(where.path).stem}:{where.place.replace(' ', '')}")


_PARSERS: dict[str, Callable[[dict, Where], QAItem | PreferenceExample]] = {
    "A": _schema_a, "A'": _schema_a_passages, "B": _schema_b,
}
