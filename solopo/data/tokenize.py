"""Token ids for prompts (chat template of the model) and responses (ending with the end-of-turn token), and the
policy for pairs longer than the model takes: skip them, stop, or truncate the prompt's context."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
import functools
from typing import Callable, Optional, Sequence

import torch

from solopo.data.schema import PreferenceExample, Prompt, Turn, prompt_text

log = logging.getLogger(__name__)
OVERLONG_POLICIES = ("skip", "error", "truncate")
TRUNCATE_SIDES = ("middle", "left")  # which tokens of the context data.overlong=truncate drops
_RETRIES = 4  # re-tokenising a cut text can take a token or two more at the seam: cut again


@dataclass(frozen=True)
class TokenizedPair:
    id: str
    prompts: dict[str, list[int]]  # "short" / "long" -> prompt ids
    responses: dict[str, list[int]]  # "chosen" / "rejected" -> response ids, end-of-turn token last
    ref_logps: Optional[dict[str, float]] = None  # "short/chosen" -> reference log-prob, when precomputed


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """The prompt (a user message, or a conversation) in the model's chat template, ready for the assistant's turn."""
    if tokenizer.chat_template:
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else [{"role": turn.role, "content": turn.content} for turn in prompt])
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # base models without a chat template see the plain text
        text = prompt_text(prompt) + "\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_padded(tokenizer, messages: Sequence[Prompt], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts as a left-padded batch (generation continues every row at the same column):
    input_ids and attention_mask, (B, L)."""
    return left_padded_ids([encode_prompt(tokenizer, m) for m in messages], tokenizer.pad_token_id, device)


def left_padded_ids(encoded: Sequence[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids as a left-padded batch: input_ids and attention_mask, (B, L), L the longest."""
    width = max(map(len, encoded))
    ids = torch.tensor([[pad_token_id] * (width - len(e)) + list(e) for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return ids, mask


def token_counter(tokenizer) -> Callable[[str], int]:
    """Tokens of a text without special tokens, memoised: context building counts the same passages often."""
    return functools.lru_cache(maxsize=None)(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))


def encode_response(tokenizer, text: str) -> list[int]:
    # Prompt and response are tokenised apart so the response tokens are the same under both contexts.
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


class OverlongPair(ValueError):
    """A pair over model.max_length under data.overlong=error."""


def tokenize_examples(
    examples: list[PreferenceExample], tokenizer, max_length: int, overlong: str = "skip", truncate: str = "middle"
) -> tuple[list[TokenizedPair], Counter]:
    """Tokenise every example. One whose longest sequence (prompt + response) exceeds max_length is skipped and
    counted as over_max_length (overlong="skip"), stops the run with an error naming it ("error"), or has the context
    of each prompt that is too long cut on the ``truncate`` side ("truncate", see ``truncated``), counted as
    truncated; one whose context cannot give enough is skipped as over_max_length."""
    if overlong not in OVERLONG_POLICIES or truncate not in TRUNCATE_SIDES:
        raise ValueError(f"data.overlong={overlong!r}, data.truncate={truncate!r}; choose one of "
                         f"{', '.join(OVERLONG_POLICIES)} and one of {', '.join(TRUNCATE_SIDES)}")
    out, counts = [], Counter()
    for ex in examples:
        responses = {"chosen": encode_response(tokenizer, ex.chosen),
                     "rejected": encode_response(tokenizer, ex.rejected)}
        room = max_length - max(map(len, responses.values()))  # what the prompt may take beside the longer response
        prompts = {"short": encode_prompt(tokenizer, ex.prompt_short), "long": encode_prompt(tokenizer, ex.prompt_long)}
        too_long = [context for context, ids in prompts.items() if len(ids) > room]
        if too_long and overlong == "error":
            raise OverlongPair(overlong_message(ex, too_long, prompts, responses, max_length))
        if too_long and overlong == "truncate":
            cut = {c: truncated(tokenizer, ex.prompt_short if c == "short" else ex.prompt_long, ex.question, room,
                                truncate) for c in too_long}
            if all(prompt is not None for prompt in cut.values()):
                prompts.update({c: encode_prompt(tokenizer, prompt) for c, prompt in cut.items()})
                counts["truncated"] += 1
                too_long = []
        if too_long:
            counts["over_max_length"] += 1
            continue
        out.append(TokenizedPair(id=ex.id, prompts=prompts, responses=responses))
    _report(counts, len(examples), truncate)
    return out, counts


def overlong_message(ex: PreferenceExample, too_long: list[str], prompts: dict[str, list[int]],
                     responses: dict[str, list[int]], max_length: int) -> str:
    """The one line of a pair over ``max_length`` under data.overlong=error: the record's place in its file (else its
    id), the prompt too long (x_short and x_long are one prompt in plain PO data) and the tokens it takes."""
    which = ("the prompt is" if ex.prompt_short == ex.prompt_long
             else "x_short and x_long are" if len(too_long) > 1 else f"x_{too_long[0]} is")
    tokens = max(len(prompts[context]) for context in too_long) + max(map(len, responses.values()))
    return (f"{ex.place or f'example {ex.id}'}: {which} too long: {tokens} tokens with the longer response, over "
            f"model.max_length={max_length} (data.overlong=error; skip leaves such a pair out, truncate cuts its "
            "context)")


def truncated(tokenizer, prompt: Prompt, question: str, room: int, side: str) -> Optional[Prompt]:
    """``prompt`` with tokens cut from its context until it encodes to at most ``room`` tokens; None when the context
    cannot give that many.

    The context is the text of the last user message before its last paragraph, or before the paragraph holding the
    ``question`` where the message holds it (the built contexts and most long-document prompts end with the
    instruction and the question). The question, that last paragraph, the system prompt, earlier messages and the
    responses are never cut. side=left drops the context's first tokens; middle the tokens around its centre, so
    its beginning and its end stay."""
    message = prompt if isinstance(prompt, str) else prompt[-1].content
    end = message.rfind(question) if question and question in message else len(message)
    start = message.rfind("\n\n", 0, end)
    at = start if start > 0 else end if end < len(message) else -1
    if at <= 0 or room <= 0:
        return None
    context = tokenizer(message[:at], add_special_tokens=False)["input_ids"]
    excess = len(encode_prompt(tokenizer, prompt)) - room
    for _ in range(_RETRIES):
        if excess >= len(context):
            return None
        keep = len(context) - excess
        head = keep // 2 if side == "middle" else 0
        shorter = tokenizer.decode(context[:head] + context[len(context) - (keep - head):]) + message[at:]
        candidate = shorter if isinstance(prompt, str) else (*prompt[:-1], Turn(prompt[-1].role, shorter))
        over = len(encode_prompt(tokenizer, candidate)) - room
        if over <= 0:
            return candidate
        excess += over
    return None


def _report(counts: Counter, total: int, side: str) -> None:
    if counts["over_max_length"]:
        skipped = counts["over_max_length"]
        log.warning("skipped %d of %d examples: %s", skipped, total, {"over_max_length": skipped})
    if counts["truncated"]:
        log.warning("truncated the context of %d of %d examples (data.truncate=%s)", counts["truncated"], total, side)
