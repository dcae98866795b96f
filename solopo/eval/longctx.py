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

from solopo.data.contexts import INSTRUCTIONS, build_contexts, render
from solopo.data.schema import QAItem
from solopo.data.tokenize import encode_prompt, left_padded
from solopo.scoring import f1, sub_em
from solopo.settings.fields import number, one_of, refuse, shown
from solopo.training.precision import autocast
from solopo.generation.vllm_engine import ENGINES, import_vllm, saved_weights, vllm_generate

log = logging.getLogger(__name__)
SHORT = "short"


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """lengths: context lengths in tokens ("short" = the evidence alone); depths: where the evidence
    block sits in the long contexts; greedy answers of up to max_new_tokens, batch_size at a time;
    template: the prompt template the model was trained with (solopo.data.contexts.INSTRUCTIONS);
    engine: "transformers" (the model in memory) or "vllm" (a vLLM engine on the same weights);
    precision: the trainer's (Lightning's name), whose autocast the transformers engine answers under."""

    lengths: tuple
    depths: tuple[float, ...]
    max_new_tokens: int
    batch_size: int
    engine: str
    seed: int  # the run's: solopo.settings passes seed, data.template and the trainer's precision
    template: str
    precision: str = "32-true"

    def __post_init__(self) -> None:
        lengths, depths = self.lengths, self.depths
        problems = one_of("engine", self.engine, ENGINES) + one_of("template", self.template, INSTRUCTIONS)
        if not (isinstance(lengths, (list, tuple)) and lengths):
            problems.append(f"lengths={shown(lengths)}: must be a list such as [short,1024,2048]")
        else:
            problems += [f"lengths={shown(lengths)}: {shown(n)} is neither short nor a number of tokens"
                         for n in lengths if n != SHORT and number("", n, 1, integer=True)]
        if not (isinstance(depths, (list, tuple)) and depths and not any(number("", d, 0, 1) for d in depths)):
            problems.append(f"depths={shown(depths)}: each depth must be a number in [0, 1] (0 = start, 1 = end of "
                            "the context)")
        refuse(problems + number("max_new_tokens", self.max_new_tokens, 1, integer=True)
               + number("batch_size", self.batch_size, 1, integer=True))
        object.__setattr__(self, "lengths", tuple(lengths))
        object.__setattr__(self, "depths", tuple(depths))


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
            prompt = render([item.context], item.question, settings.template)
            if count_tokens(prompt) + settings.max_new_tokens <= max_length:
                cases.append(EvalCase(item.id, item.answers, length_bucket(count_tokens(prompt)), "-", prompt))
            continue
        rng = random.Random(f"{settings.seed}:{item.id}")  # the same contexts whichever model is evaluated
        for length in fits:
            if length == SHORT:
                relevant = list(item.relevant)
                rng.shuffle(relevant)
                cases.append(EvalCase(item.id, item.answers, SHORT, "-", render(relevant, item.question, settings.template)))
                continue
            for depth in settings.depths:
                try:
                    ctx = build_contexts(item, int(length), count_tokens, rng, pool, depth=depth,
                                         template=settings.template)
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
                   desc: str = "evaluating", precision: str = "32-true") -> list[str]:
    """Greedy answers, batched with left padding; prompts are sorted by length so a batch pads little;
    computed under the autocast of Lightning's ``precision``."""
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
            with torch.no_grad(), autocast(device, precision):
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id, use_cache=True)
            for i, text in zip(batch, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                answers[i] = text.strip()
    finally:
        model.train(was_training)
    return answers


def vllm_greedy_answers(model_path: str, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int = 0,
                        **engine_args) -> list[str]:
    """Greedy answers from a vLLM engine on the weights at ``model_path``, as greedy_answers gives them: the
    same token ids (the chat template is applied here, so vLLM adds no special token of its own), the same
    end of an answer (max_new_tokens or the end of turn), special tokens dropped and whitespace stripped."""
    ids = [{"prompt_token_ids": encode_prompt(tokenizer, p)} for p in prompts]
    params = dict(n=1, temperature=0.0, max_tokens=max_new_tokens)  # temperature 0: vLLM decodes greedily
    outputs = vllm_generate(model_path, ids, params, "eval.engine", seed=seed, **engine_args)
    return [out.outputs[0].text.strip() for out in outputs]


def answer_all(model, tokenizer, prompts: Sequence[str], settings: EvalSettings, max_length: int,
               desc: str = "evaluating", engine_args: dict | None = None) -> list[str]:
    """Greedy answers from the engine ``settings.engine`` names; ``engine_args`` are further vllm.LLM arguments."""
    if settings.engine == "transformers":
        return greedy_answers(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size, desc=desc,
                              precision=settings.precision)
    import_vllm("eval.engine")  # before the weights are written out for it
    # vLLM would otherwise size its KV cache for the model config's longest context, which may not fit
    engine_args = {"max_model_len": max_length, **(engine_args or {})}
    with saved_weights(model, tokenizer) as path:
        log.info("%s: vLLM engine on the weights written to %s", desc, path)
        return vllm_greedy_answers(path, tokenizer, prompts, settings.max_new_tokens, settings.seed, **engine_args)


def score_table(cases: Sequence[EvalCase], answers: Sequence[str]) -> dict:
    """{"cells": [{length, depth, sub_em, f1, n}], "by_length": {length: sub_em}, "average": sub_em,
    "average_long": sub_em over every long-context case}; means are over questions.

    An answer is scored whole, as the pair sampler scores its samples: under the cot template the
    reasoning comes first and sub-EM finds the gold answer anywhere in it, so evaluation and the
    share of correct samples measure the same thing."""
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
             count_tokens: Callable[[str], int], max_length: int, desc: str = "evaluating",
             engine_args: dict | None = None) -> dict:
    cases = build_cases(items, settings, count_tokens, pool, max_length)
    answers = answer_all(model, tokenizer, [c.prompt for c in cases], settings, max_length, desc, engine_args)
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
