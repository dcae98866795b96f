"""Long-context QA evaluation: greedy answers to held-out questions at a ladder of context lengths
and evidence depths, scored by sub-EM and F1.

Each question is asked with its evidence alone ("short") and buried in distractors at every
length of the ladder, with the evidence block placed at each depth (0 = start of the context,
1 = end). The table says where a model finds the evidence and where it loses it.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from solopo.data.contexts import build_contexts, render
from solopo.data.schema import QAItem
from solopo.data.tokenize import left_padded
from solopo.eval.metrics import f1, sub_em

log = logging.getLogger(__name__)
SHORT = "short"


@dataclass(frozen=True)
class EvalSettings:
    """lengths: context lengths in tokens ("short" = the evidence alone); depths: where the evidence
    block sits in the long contexts; greedy answers of up to max_new_tokens, batch_size at a time."""

    lengths: tuple = (SHORT, 1024, 2048, 4096, 8192)
    depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    max_new_tokens: int = 32
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        object.__setattr__(self, "depths", tuple(self.depths))
        bad = [d for d in self.depths if not 0.0 <= d <= 1.0]
        if bad:
            raise ValueError(f"eval.depths must lie in [0, 1]; got {bad}")


@dataclass(frozen=True)
class EvalCase:
    item_id: str
    answers: tuple[str, ...]
    length: str  # "short" or the target length in tokens, as text (a table key)
    depth: str  # "-" for short, else the depth, e.g. "0.5"
    prompt: str


def build_cases(items: Sequence[QAItem], settings: EvalSettings, count_tokens: Callable[[str], int],
                pool: Sequence[str], max_length: int) -> list[EvalCase]:
    """Every (question, length, depth) to ask; lengths over the model's max_length are left out (logged)."""
    fits = [n for n in settings.lengths if n == SHORT or int(n) + 64 <= max_length]
    if len(fits) < len(settings.lengths):
        log.warning("eval lengths %s exceed the model's max_length %d and are skipped",
                    [n for n in settings.lengths if n not in fits], max_length)
    cases, unfillable = [], 0
    for item in items:
        if item.context is not None:  # a fixed long context (LongBench): asked once, at its own length
            prompt = render([item.context], item.question)
            if count_tokens(prompt) + settings.max_new_tokens <= max_length:
                cases.append(EvalCase(item.id, item.answers, length_bucket(count_tokens(prompt)), "-", prompt))
            continue
        rng = random.Random(f"{settings.seed}:{item.id}")  # the same contexts whichever model is evaluated
        for length in fits:
            if length == SHORT:
                relevant = list(item.relevant)
                rng.shuffle(relevant)
                cases.append(EvalCase(item.id, item.answers, SHORT, "-", render(relevant, item.question)))
                continue
            for depth in settings.depths:
                try:
                    ctx = build_contexts(item, int(length), count_tokens, rng, pool, depth=depth)
                except ValueError:  # too few distractors for this length: the cell is left out, not the run
                    unfillable += 1
                    continue
                cases.append(EvalCase(item.id, item.answers, str(length), f"{depth:g}", ctx.long))
    if unfillable:
        log.warning("%d evaluation contexts left out: too few distractor passages to reach their length", unfillable)
    return cases


def length_bucket(tokens: int) -> str:
    """LongBench-style length bands for fixed contexts: 0-4k, 4-8k, 8-16k, ... (upper bounds in K tokens)."""
    upper = 4
    while tokens > upper * 1024:
        upper *= 2
    return f"{upper // 2 if upper > 4 else 0}-{upper}k"


def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                   desc: str = "evaluating") -> list[str]:
    """Greedy answers, batched with left padding; prompts are sorted by length so a batch pads little."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            batch = order[start : start + batch_size]
            ids, mask = left_padded(tokenizer, [prompts[i] for i in batch], device)
            width = ids.shape[1]
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id, use_cache=True)
            for i, text in zip(batch, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                answers[i] = text.strip()
    finally:
        model.train(was_training)
    return answers


def score_table(cases: Sequence[EvalCase], answers: Sequence[str]) -> dict:
    """{"cells": [{length, depth, sub_em, f1, n}], "by_length": {length: sub_em}, "average": sub_em,
    "average_long": sub_em over every long-context case}; means are over questions."""
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for case, answer in zip(cases, answers):
        cells.setdefault((case.length, case.depth), []).append((sub_em(answer, case.answers), f1(answer, case.answers)))
    rows = [{"length": length, "depth": depth, "sub_em": _mean(s for s, _ in v), "f1": _mean(f for _, f in v), "n": len(v)}
            for (length, depth), v in cells.items()]
    by_length: dict[str, list[float]] = {}
    for case, answer in zip(cases, answers):
        by_length.setdefault(case.length, []).append(sub_em(answer, case.answers))
    long_scores = [s for length, scores in by_length.items() if length != SHORT for s in scores]
    return {"cells": rows, "by_length": {k: _mean(v) for k, v in by_length.items()},
            "average": _mean(s for v in by_length.values() for s in v), "average_long": _mean(long_scores)}


def evaluate(model, tokenizer, items: Sequence[QAItem], pool: Sequence[str], settings: EvalSettings,
             count_tokens: Callable[[str], int], max_length: int, desc: str = "evaluating") -> dict:
    cases = build_cases(items, settings, count_tokens, pool, max_length)
    answers = greedy_answers(model, tokenizer, [c.prompt for c in cases], settings.max_new_tokens,
                             settings.batch_size, desc=desc)
    table = score_table(cases, answers)
    table["examples"] = [{"item": c.item_id, "length": c.length, "depth": c.depth, "answer": a, "gold": list(c.answers)}
                         for c, a in list(zip(cases, answers))[:20]]
    return table


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def format_table(tables: dict[str, dict]) -> str:
    """A markdown table: one row per checkpoint (e.g. base, trained), sub-EM per length, and the averages."""
    lengths = list(next(iter(tables.values()))["by_length"])
    lines = ["| model | " + " | ".join(str(n) for n in lengths) + " | avg long |", "|---" * (len(lengths) + 2) + "|"]
    for name, table in tables.items():
        cells = " | ".join(f"{100 * table['by_length'][n]:.1f}" for n in lengths)
        lines.append(f"| {name} | {cells} | {100 * table['average_long']:.1f} |")
    return "\n".join(lines)
