"""Chat messages as the preference formats write them -> solopo's prompts (str or Turns) and response strings.

TRL writes a message as {"role": ..., "content": ...}; LLaMA-Factory's sharegpt layout as {"from": "human" | "gpt" |
"system" | ..., "value": ...}, with its ``tags`` able to rename both keys and roles. Both map to Turn(role, content)
with the roles the chat templates know: system, user, assistant (and tool for LLaMA-Factory's observations).
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from solopo.data.schema import Prompt, Turn
from solopo.records import Where, check, check_text


@dataclass(frozen=True)
class Tags:
    """The keys of a message and the names of its roles in one layout."""

    role: str = "role"
    content: str = "content"
    user: Optional[str] = "user"
    assistant: Optional[str] = "assistant"
    system: Optional[str] = "system"
    observation: Optional[str] = "tool"
    function: Optional[str] = "function_call"

    def roles(self) -> dict[str, str]:
        """This layout's role name -> the chat template's."""
        found = {self.user: "user", self.assistant: "assistant", self.system: "system", self.observation: "tool",
                 self.function: "assistant"}
        return {name: role for name, role in found.items() if name is not None}  # None: a role the layout lacks


OPENAI = Tags()
SHAREGPT = Tags(role="from", content="value", user="human", assistant="gpt", observation="observation")


def tags_of(message: Any, default: Tags) -> Tags:
    """The layout a message is written in: a "role" key means OpenAI's, whatever the format's default."""
    return OPENAI if isinstance(message, dict) and OPENAI.role in message else default


def turn(message: Any, label: str, where: Where, tags: Tags) -> Turn:
    check(message, dict, label, where)
    inner = where.inside(label)
    role = check_text(message.get(tags.role), inner.label(tags.role), inner)
    if role not in tags.roles():
        raise inner.error(f"role {role!r} is not one of {', '.join(tags.roles())}", inner.label(tags.role))
    content = check_text(message.get(tags.content), inner.label(tags.content), inner, strip=False)
    return Turn(tags.roles()[role], content)


def turns(value: Any, label: str, where: Where, tags: Tags) -> tuple[Turn, ...]:
    """A non-empty list of messages."""
    if not check(value, list, label, where):
        raise where.error("empty list", label)
    return tuple(turn(message, f"{label}[{index}]", where, tags_of(message, tags))
                 for index, message in enumerate(value))


def prompt(value: Any, label: str, where: Where, tags: Tags = OPENAI) -> Prompt:
    """A string (one user message), or messages ending where the assistant's response begins."""
    if not isinstance(value, list):
        return plain_text(value, label, where)
    found = turns(value, label, where, tags)
    if found[-1].role == "assistant":
        raise where.error("ends with an assistant message; the response belongs in chosen/rejected", label)
    if all(turn.role == "system" for turn in found):  # the responses would answer no one: a user turn left out
        raise where.error("holds only system messages; the user's turn is missing", label)
    return found


def response(value: Any, label: str, where: Where, tags: Tags = OPENAI) -> str:
    """A string, one assistant message, or a list holding one assistant message."""
    if not isinstance(value, (list, dict)):
        return plain_text(value, label, where)
    messages = (turns(value, label, where, tags) if isinstance(value, list)
                else (turn(value, label, where, tags_of(value, tags)),))
    if len(messages) != 1 or messages[0].role != "assistant":
        raise where.error(f"expected one assistant message, got {', '.join(m.role for m in messages)}", label)
    return messages[0].content


def plain_text(value: Any, label: str, where: Where) -> str:
    """A prompt or response given as text, as written; not messages written out as text. A list of messages stored
    as a string (json.dumps of it; pandas' repr of a list, or of a numpy array of messages as Parquet reads them back,
    in a CSV file: "[{'role': 'user', ...}]") would train on its brackets and keys as if they were the conversation."""
    text = check_text(value, label, where, strip=False)
    if _messages_as_text(text.strip()):
        raise where.error("holds chat messages written out as text (a list of {role, content} as a string): store "
                          "the list itself (JSON lines or Parquet keep it), not its text", label)
    return text


def _messages_as_text(text: str) -> bool:
    """Whether ``text`` reads as a message or a list of them: each with a role these layouts know and its content."""
    if text[:1] not in "[{" or text[-1:] not in "]}":
        return False
    numpy_repr = re.sub(r"}\s*\n\s*{", "}, {", text)  # numpy prints an array's items without commas
    for read, source in ((json.loads, text), (ast.literal_eval, text), (ast.literal_eval, numpy_repr)):
        try:
            value = read(source)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
        messages = value if isinstance(value, list) else [value]
        return bool(messages) and all(isinstance(m, dict) and any(_is_message(m, tags) for tags in (OPENAI, SHAREGPT))
                                      for m in messages)
    return False


def _is_message(message: dict, tags: Tags) -> bool:
    return message.get(tags.role) in tags.roles() and isinstance(message.get(tags.content), (str, list))


def split_implicit(chosen: Any, rejected: Any, where: Where) -> tuple[Prompt, str, str]:
    """TRL's implicit prompt: chosen and rejected each hold the whole exchange, and the prompt is what they share.

    Messages: the shared leading messages are the prompt, and each side's one remaining assistant message is its
    response. Text: the shared beginning, less a word the two only begin alike, is the prompt; the rest, from the space
    before it, the responses ("The sky is" + " blue." / " green.").
    """
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen_turns = turns(chosen, "chosen", where, OPENAI)
        rejected_turns = turns(rejected, "rejected", where, OPENAI)
        shared = 0
        while shared < min(len(chosen_turns), len(rejected_turns)) and chosen_turns[shared] == rejected_turns[shared]:
            shared += 1
        if shared == 0:
            raise where.error("shares no leading message with 'rejected', so there is no prompt", "chosen")
        _refuse_no_response({"chosen": len(chosen_turns), "rejected": len(rejected_turns)}, shared, where)
        return (prompt(chosen[:shared], "chosen", where),
                response(chosen[shared:] or None, f"chosen[{shared}:]", where),
                response(rejected[shared:] or None, f"rejected[{shared}:]", where))
    chosen_text = plain_text(chosen, "chosen", where)
    rejected_text = plain_text(rejected, "rejected", where)
    common = 0
    while common < min(len(chosen_text), len(rejected_text)) and chosen_text[common] == rejected_text[common]:
        common += 1
    cut = common
    while cut and chosen_text[cut - 1].isalnum():  # a word both begin alike ("4" and "42") belongs to the responses
        cut -= 1
    if cut and chosen_text[cut - 1] == " ":  # a space before a response is the response's, as in TRL (a newline stays)
        cut -= 1
    if not chosen_text[:cut].strip():
        raise where.error("shares no leading words with 'rejected', so there is no prompt", "chosen")
    _refuse_no_response({"chosen": len(chosen_text[cut:].strip()), "rejected": len(rejected_text[cut:].strip())}, 0,
                        where)
    return chosen_text[:cut], chosen_text[cut:], rejected_text[cut:]


def _refuse_no_response(lengths: dict[str, int], shared: int, where: Where) -> None:
    """An implicit prompt leaves each side a response: not so where one side is all shared (the two the same, or one
    the other with more at its end: a pair that would teach the model to end its turn at once)."""
    for name, length in lengths.items():
        if length <= shared:
            other = "rejected" if name == "chosen" else "chosen"
            same = "is the same as" if all(n <= shared for n in lengths.values()) else "is all the beginning of"
            raise where.error(f"{same} '{other}': the implicit prompt (what both begin with) leaves it no response",
                              name)
