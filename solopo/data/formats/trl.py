"""TRL's preference formats (its "dataset formats" page), as (prompt, chosen, rejected):

    explicit prompt, standard:        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    explicit prompt, conversational:  {"prompt": [{"role": "user", "content": "..."}],
                                       "chosen": [{"role": "assistant", "content": "..."}], "rejected": [...]}
    implicit prompt, standard:        {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    implicit prompt, conversational:  {"chosen": [user message, assistant message], "rejected": [same user, other]}

The explicit standard layout is solopo's schema B. Conversational prompts keep their messages, system ones
included, for the model's chat template; implicit prompts are split off as solopo.data.formats.chat.split_implicit says.
A prompt beside chosen/rejected conversations that repeat it (UltraFeedback's layout) is read as an implicit prompt.
"""
from __future__ import annotations

from solopo.data.formats.chat import prompt, response, split_implicit
from solopo.data.formats.errors import Where
from solopo.data.formats.records import required
from solopo.data.schema import Prompt


def explicit(record: dict, where: Where) -> tuple[Prompt, str, str]:
    """The prompt as given; but where chosen is a conversation that opens with the prompt's own messages (or a
    conversation beside a text prompt, as some published sets are), the prompt is the messages chosen and rejected
    share, as TRL reads them too."""
    chosen = required(record, "chosen", where)
    if isinstance(chosen, list) and chosen and isinstance(chosen[0], dict) and chosen[0].get("role") != "assistant":
        return implicit(record, where)
    return (prompt(required(record, "prompt", where), "prompt", where), response(chosen, "chosen", where),
            response(required(record, "rejected", where), "rejected", where))


def implicit(record: dict, where: Where) -> tuple[Prompt, str, str]:
    return split_implicit(required(record, "chosen", where), required(record, "rejected", where), where)
