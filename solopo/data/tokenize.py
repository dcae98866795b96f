"""Token ids for prompts (chat template of the model) and responses (ending with the end-of-turn token)."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
import functools
from typing import Callable, Optional, Sequence

import torch

from solopo.data.schema import PreferenceExample

log = logging.getLogger(__name__)
OVERLONG_POLICIES = ("skip", "error")


@dataclass(frozen=True)
class TokenizedPair:
    id: str
    prompts: dict[str, list[int]]  # "short" / "long" -> prompt ids
    responses: dict[str, list[int]]  # "chosen" / "rejected" -> response ids, end-of-turn token last
    ref_logps: Optional[dict[str, float]] = None  # "short/chosen" -> reference log-prob, when precomputed


def encode_prompt(tokenizer, message: str) -> list[int]:
    """The user message wrapped in the model's chat template, ready for the assistant's turn."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    else:  # base models without a chat template see the plain message
        text = message + "\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_padded(tokenizer, messages: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts as a left-padded batch (generation continues every row at the same column):
    input_ids and attention_mask, (B, L)."""
    encoded = [encode_prompt(tokenizer, m) for m in messages]
    width = max(map(len, encoded))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return ids, mask


def token_counter(tokenizer) -> Callable[[str], int]:
    """Tokens of a text without special tokens, memoised: context building counts the same passages often."""
    return functools.lru_cache(maxsize=None)(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))


def encode_response(tokenizer, text: str) -> list[int]:
    # Prompt and response are tokenised apart so the response tokens are the same under both contexts.
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_examples(
    examples: list[PreferenceExample], tokenizer, max_length: int, overlong: str = "skip"
) -> tuple[list[TokenizedPair], Counter]:
    """Tokenise every example; those whose longest sequence exceeds max_length are skipped
    and counted (overlong="skip") or rejected with an error naming the example ("error")."""
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"data.overlong={overlong!r}; choose one of {', '.join(OVERLONG_POLICIES)}")
    out, skipped = [], Counter()
    for ex in examples:
        pair = TokenizedPair(
            id=ex.id,
            prompts={"short": encode_prompt(tokenizer, ex.prompt_short), "long": encode_prompt(tokenizer, ex.prompt_long)},
            responses={"chosen": encode_response(tokenizer, ex.chosen), "rejected": encode_response(tokenizer, ex.rejected)},
        )
        longest = max(len(p) for p in pair.prompts.values()) + max(len(r) for r in pair.responses.values())
        if longest > max_length:
            if overlong == "error":
                raise ValueError(f"example {ex.id}: {longest} tokens exceed the model's max_length {max_length}")
            skipped["over_max_length"] += 1
            continue
        out.append(pair)
    if skipped:
        log.warning("skipped %d of %d examples: %s", sum(skipped.values()), len(examples), dict(skipped))
    return out, skipped
