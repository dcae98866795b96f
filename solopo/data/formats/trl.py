"""TRL's preference formats, as (prompt, chosen, rejected).

Specification: TRL's guide "Dataset formats and types" (huggingface/trl, docs/source/dataset_formats.md), section
"Preference", with the rules of its ``trl/data_utils.py`` (``is_conversational``, ``maybe_extract_prompt``) where the
guide leaves them to the code:

    explicit prompt, standard:        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    explicit prompt, conversational:  {"prompt": [{"role": "user", "content": "..."}],
                                       "chosen": [{"role": "assistant", "content": "..."}], "rejected": [...]}
    implicit prompt, standard:        {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    implicit prompt, conversational:  {"chosen": [user message, assistant message], "rejected": [same user, other]}

The explicit standard layout is solopo's schema B. Conversational prompts keep their messages, system ones included,
for the model's chat template; implicit prompts are split off as solopo.data.formats.chat.split_implicit says: the
messages chosen and rejected share, or for text their shared beginning less a trailing space (TRL's rule), and less a
word they only begin alike ("blue"/"black": TRL would cut "bl"). As in ``maybe_extract_prompt``, a text prompt beside
chosen/rejected conversations that repeat it (UltraFeedback's layout) is read as an implicit prompt. Where TRL's code
would make an empty prompt (a text prompt beside one assistant message each) or ignore the prompt (messages beside
text responses), the prompt is kept as given. Refused: a chosen or rejected holding more than one message after the
prompt (tool calls, multi-turn completions), a prompt ending with an assistant message (TRL continues it), a chosen
and a rejected of different forms, and a file whose records change form (solopo.data.formats.pairs.Layout).
"""
from __future__ import annotations

from solopo.data.formats.chat import prompt, response, split_implicit
from solopo.data.schema import Prompt
from solopo.records import Where, required


def explicit(record: dict, where: Where) -> tuple[Prompt, str, str]:
    """The prompt as given; but a text prompt beside a chosen conversation that opens with other than the assistant's
    message is a repeated prompt: the prompt is then the messages chosen and rejected share, as TRL reads them too."""
    given, chosen = required(record, "prompt", where), required(record, "chosen", where)
    if (not isinstance(given, list) and isinstance(chosen, list) and chosen and isinstance(chosen[0], dict)
            and chosen[0].get("role") != "assistant"):
        return implicit(record, where)
    return (prompt(given, "prompt", where), response(chosen, "chosen", where),
            response(required(record, "rejected", where), "rejected", where))


def implicit(record: dict, where: Where) -> tuple[Prompt, str, str]:
    return split_implicit(required(record, "chosen", where), required(record, "rejected", where), where)
