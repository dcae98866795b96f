"""LLaMA-Factory's preference layouts (its data/README.md, ``"ranking": true``), as (prompt, chosen, rejected):

    alpaca:   {"instruction": "...", "input": "...", "chosen": "...", "rejected": "...",
               "system": "...", "history": [["earlier question", "earlier answer"], ...]}
    sharegpt: {"conversations": [{"from": "human", "value": "..."}, ...], "system": "...",
               "chosen": {"from": "gpt", "value": "..."}, "rejected": {"from": "gpt", "value": "..."}}

A ``dataset_info.json`` entry renames the columns (``columns``: prompt, query, system, history for alpaca; messages,
system for sharegpt; chosen and rejected for both) and sharegpt's keys and roles (``tags``); ``formatting`` picks the
layout. Without an entry the default names above apply. The alpaca prompt is the instruction, then the input on the
next line; history and system become earlier messages, so the chat template renders them.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from solopo.data.formats.chat import SHAREGPT, response, turns
from solopo.data.formats.errors import Where
from solopo.data.formats.records import check, check_text, field, required
from solopo.data.schema import Prompt, Turn

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
                  "system": "system", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"}
_TAG_KEYS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
             "system_tag": "system", "observation_tag": "observation", "function_tag": "function"}


def layout(mapping: Optional[dict]) -> str:
    return str((mapping or {}).get("formatting", "alpaca"))


def alpaca(record: dict, where: Where, mapping: Optional[dict] = None) -> tuple[Prompt, str, str]:
    columns = {**ALPACA_COLUMNS, **(mapping or {}).get("columns", {})}
    instruction = check_text(required(record, columns["prompt"], where), columns["prompt"], where, strip=False)
    query = field(record, columns["query"], str, where, default="")
    earlier = _system(record, columns, where) + _history(record.get(columns["history"]), columns["history"], where)
    message = f"{instruction}\n{query}" if query.strip() else instruction
    return ((*earlier, Turn("user", message)) if earlier else message,
            response(required(record, columns["chosen"], where), columns["chosen"], where),
            response(required(record, columns["rejected"], where), columns["rejected"], where))


def sharegpt(record: dict, where: Where, mapping: Optional[dict] = None) -> tuple[Prompt, str, str]:
    columns = {**SHAREGPT_COLUMNS, **(mapping or {}).get("columns", {})}
    tags = replace(SHAREGPT, **{_TAG_KEYS[key]: value for key, value in (mapping or {}).get("tags", {}).items()
                                if key in _TAG_KEYS})
    conversation = turns(required(record, columns["messages"], where), columns["messages"], where, tags)
    if conversation[-1].role == "assistant":
        raise where.error("ends with an assistant message; the response belongs in chosen/rejected",
                          columns["messages"])
    return (_system(record, columns, where) + conversation,
            response(required(record, columns["chosen"], where), columns["chosen"], where, tags),
            response(required(record, columns["rejected"], where), columns["rejected"], where, tags))


def _system(record: dict, columns: dict, where: Where) -> tuple[Turn, ...]:
    system = field(record, columns["system"], str, where, default="")
    return (Turn("system", system),) if system.strip() else ()


def _history(value: Any, label: str, where: Where) -> tuple[Turn, ...]:
    """[[question, answer], ...] -> alternating user and assistant messages."""
    if value is None:
        return ()
    earlier = []
    for index, exchange in enumerate(check(value, list, label, where)):
        if not (isinstance(exchange, list) and len(exchange) == 2):
            raise where.error("expected [question, answer]", f"{label}[{index}]")
        earlier += [Turn("user", check_text(exchange[0], f"{label}[{index}][0]", where, strip=False)),
                    Turn("assistant", check_text(exchange[1], f"{label}[{index}][1]", where, strip=False))]
    return tuple(earlier)
