"""LLaMA-Factory's preference layouts, as (prompt, chosen, rejected).

Specification: LLaMA-Factory's ``data/README.md`` (hiyouga/LLaMA-Factory), its sections "Preference Dataset" under
"Alpaca Format" and "Sharegpt Format", and the ``dataset_info.json`` description at its top; where the README leaves a
rule to the code, its ``src/llamafactory/data/parser.py`` (DatasetAttr) and ``converter.py`` decide, as noted below.

    alpaca:   {"instruction": "...", "input": "...", "chosen": "...", "rejected": "...",
               "system": "...", "history": [["earlier question", "earlier answer"], ...]}
    sharegpt: {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."},
                                 {"from": "human", "value": "..."}], "system": "...",
               "chosen": {"from": "gpt", "value": "..."}, "rejected": {"from": "gpt", "value": "..."}}

A ``dataset_info.json`` entry describes a file: ``"ranking": true`` marks preference data (an entry without it is
refused, as LLaMA-Factory refuses it for DPO), ``formatting`` picks alpaca (the default) or sharegpt, ``columns``
renames the columns (prompt, query, system, history for alpaca; messages, system for sharegpt; chosen and rejected for
both) and ``tags`` sharegpt's message keys and roles. As in LLaMA-Factory, an entry's ``columns`` lists every column
read: system and history are read only when it names them, a sharegpt entry's ``columns`` must name messages (an
alpaca entry's, prompt or query), and an entry without ``columns`` reads the instruction, input and conversations
columns; ``tags``, when given, likewise lists every role (observation and function_call are
then unknown unless named; the role and content keys keep their defaults). Where LLaMA-Factory has no default,
chosen and rejected are read from the columns of those names. A file with no entry is read with the default names
above, system and history included.

The alpaca prompt is the instruction, then the input on the next line when there is one; history and system become
earlier messages, so the chat template renders them. A sharegpt conversation alternates the user's turns (human or
observation) and the assistant's (gpt or function_call), begins and ends with the user's, and may open with a system
message, which then stands for the system column; the chosen and rejected messages are the assistant's.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from solopo.data.formats.chat import SHAREGPT, Tags, response, turns
from solopo.data.schema import Prompt, Turn
from solopo.records import Where, check, check_text, field, required

LAYOUTS = ("alpaca", "sharegpt")
# the columns of a file with no dataset_info.json entry
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
                  "system": "system", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"}
# an entry without "columns" (parser.py's DatasetAttr defaults; chosen and rejected: solopo's, LLaMA-Factory has none)
_ENTRY_DEFAULTS = {"prompt": "instruction", "query": "input", "messages": "conversations", "chosen": "chosen",
                   "rejected": "rejected"}
_TAG_KEYS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
             "system_tag": "system", "observation_tag": "observation", "function_tag": "function"}


def layout(mapping: Optional[dict]) -> str:
    return str((mapping or {}).get("formatting", "alpaca"))


def entry_problem(entry: dict) -> Optional[str]:
    """What makes a dataset_info.json entry unusable as preference data, or None."""
    if layout(entry) not in LAYOUTS:
        return f"formatting {layout(entry)!r} is not one of {', '.join(LAYOUTS)}"
    if entry.get("ranking") is not True:
        return 'not a preference dataset: its entry needs "ranking": true (with chosen and rejected columns)'
    if not isinstance(entry.get("columns", {}), dict) or not isinstance(entry.get("tags", {}), dict):
        return '"columns" and "tags" must be objects'
    if layout(entry) == "sharegpt" and not columns_of(entry, SHAREGPT_COLUMNS)["messages"]:
        # LLaMA-Factory's parser sets messages to None then; conversations was read here in its place
        return ('its "columns" do not name "messages": as in LLaMA-Factory, an entry\'s columns are all that is read, '
                'so no record would have a conversation; add "messages": "conversations" (or the column holding it)')
    read = columns_of(entry, ALPACA_COLUMNS)
    if layout(entry) == "alpaca" and not (read["prompt"] or read["query"]):
        # else every record is refused as having an empty prompt, naming a column that holds text but is not read
        return ('its "columns" name neither "prompt" nor "query": as in LLaMA-Factory, an entry\'s columns are all '
                'that is read, so no record would have a prompt; add "prompt": "instruction" (and "query": "input")')
    return None


def columns_of(mapping: Optional[dict], bare: dict) -> dict:
    """Each role's column name (None: not read): ``bare`` without an entry; else the entry's columns, or LLaMA-Factory's
    defaults when it gives none."""
    if mapping is None:
        return bare
    given = mapping.get("columns")
    found = {key: (given.get(key) if given is not None else _ENTRY_DEFAULTS.get(key)) for key in bare}
    return {**found, "chosen": found["chosen"] or "chosen", "rejected": found["rejected"] or "rejected"}


def tags_of(mapping: Optional[dict]) -> Tags:
    """sharegpt's message keys and role names: the defaults, or exactly the tags an entry lists."""
    given = (mapping or {}).get("tags")
    if given is None:
        return SHAREGPT
    names = {field_name: given.get(key) for key, field_name in _TAG_KEYS.items()}
    # an unlisted role is unknown, as in LLaMA-Factory; an unlisted key keeps its default, where LLaMA-Factory fails
    return replace(SHAREGPT, **{**names, "role": names["role"] or SHAREGPT.role,
                                "content": names["content"] or SHAREGPT.content})


def alpaca(record: dict, where: Where, mapping: Optional[dict] = None) -> tuple[Prompt, str, str]:
    columns = columns_of(mapping, ALPACA_COLUMNS)
    instruction = (check_text(required(record, columns["prompt"], where), columns["prompt"], where, strip=False)
                   if columns["prompt"] else "")
    query = field(record, columns["query"], str, where, default="") if columns["query"] else ""
    message = "\n".join(part for part in (instruction, query) if part)  # "instruction\ninput", as LLaMA-Factory joins
    if not message.strip():
        raise where.error("empty: the prompt is the instruction and the input, and both are empty",
                          columns["query"] or "input")
    history = _history(record.get(columns["history"]), columns["history"], where) if columns["history"] else ()
    earlier = _system(record, columns, where) + history
    return ((*earlier, Turn("user", message)) if earlier else message,
            response(required(record, columns["chosen"], where), columns["chosen"], where),
            response(required(record, columns["rejected"], where), columns["rejected"], where))


def sharegpt(record: dict, where: Where, mapping: Optional[dict] = None) -> tuple[Prompt, str, str]:
    columns, tags = columns_of(mapping, SHAREGPT_COLUMNS), tags_of(mapping)
    label = columns["messages"]  # entry_problem refuses an entry whose columns leave it out
    if label not in record:
        raise where.error(f"required but missing: the conversation is read from {label!r} ({_named_by(mapping)}); "
                          f"the record's columns: {', '.join(map(str, record))}", label)
    conversation = turns(required(record, label, where), label, where, tags)
    opens_with_system = conversation[0].role == "system"  # then it stands for the system column
    system = conversation[:1] if opens_with_system else _system(record, columns, where)
    _check_turns(conversation[int(opens_with_system):], label, where, offset=int(opens_with_system))
    return (system + conversation[int(opens_with_system):],
            response(required(record, columns["chosen"], where), columns["chosen"], where, tags),
            response(required(record, columns["rejected"], where), columns["rejected"], where, tags))


def _named_by(mapping: Optional[dict]) -> str:
    """Where a sharegpt file's conversation column got its name (a file without an entry is sharegpt by having
    conversations, so only an entry's column can be missing)."""
    if "columns" in (mapping or {}):
        return 'named by the dataset_info.json entry\'s "columns": "messages"'
    return 'LLaMA-Factory\'s default: the dataset_info.json entry has no "columns" to name another ("messages": ...)'


def _check_turns(conversation: tuple[Turn, ...], label: str, where: Where, offset: int) -> None:
    """The user's turns (user, tool) at even places and the assistant's at odd ones, ending with the user's: the only
    conversations LLaMA-Factory's converter keeps (it skips others with a warning; here they stop the run)."""
    if not conversation:
        raise where.error("holds only a system message; the user's turn is missing", label)
    if conversation[-1].role == "assistant":
        raise where.error("ends with an assistant message; the response belongs in chosen/rejected", label)
    for index, turn in enumerate(conversation):
        whose = "user" if index % 2 == 0 else "assistant"
        if turn.role not in (("user", "tool") if whose == "user" else ("assistant",)):
            raise where.error(f"a message of role {turn.role} where the {whose}'s turn comes: turns alternate user and "
                              "assistant, beginning and ending with the user's", f"{label}[{index + offset}]")


def _system(record: dict, columns: dict, where: Where) -> tuple[Turn, ...]:
    if not columns.get("system"):
        return ()
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
