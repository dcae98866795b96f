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

from solopo.data.contexts import INSTRUCTIONS, build_contexts, render
from solopo.data.schema import QAItem
from solopo.data.tokenize import encode_prompt, left_padded_ids
from solopo.generation.batching import budget_batches, generate_batches, uses_static_cache
from solopo.generation.decoding import decode, end_ids, greedy_pick, plain_decoding
from solopo.report.stats import Change, paired_change, wilson
from solopo.scoring import SUB_EM, Scorer, checked_score, f1, points, score_name, scorer_problems, sub_em
from solopo.settings.fields import flag, number, one_of, refuse, shown
from solopo.training.precision import autocast
from solopo.generation.vllm_engine import ENGINES, import_vllm, saved_weights, vllm_generate

log = logging.getLogger(__name__)
SHORT = "short"
ANSWER_ROOM = 64  # tokens an evaluation length leaves free below the model's max_length: the template and the answer
SCHEDULE = ("every_n_steps", "keep_best")  # when a training run evaluates, not what an evaluation answers


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """lengths: context lengths in tokens ("short" = the evidence alone); depths: where the evidence
    block sits in the long contexts; greedy answers of up to max_new_tokens, at most batch_size prompts and
    batch_tokens tokens (rows x (longest prompt + max_new_tokens); None: no token bound) at a time, longest first;
    static_cache: on a GPU, a static KV cache whose decoding step is a CUDA graph (solopo.generation.decoding);
    half_weights: under mixed precision, answers computed with copies of the weights in the autocast dtype
    (batching.generation_weights);
    template: the prompt template the model was trained with (solopo.data.contexts.INSTRUCTIONS);
    engine: "transformers" (the model in memory) or "vllm" (a vLLM engine on the same weights);
    precision: the trainer's (Lightning's name), whose autocast the transformers engine answers under;
    scorer: the score of an answer in the table's by-length means (solopo.scoring; sub-EM by default).
    every_n_steps: also evaluate during training every N optimizer steps (solopo.training.eval_callback), and with
    keep_best the weights of the best such step become the run's trained model."""

    lengths: tuple
    depths: tuple[float, ...]
    max_new_tokens: int
    batch_size: int
    batch_tokens: int | None
    static_cache: bool
    half_weights: bool
    engine: str
    seed: int  # the run's: solopo.settings passes seed, data.template and the trainer's precision
    template: str
    scorer: Scorer
    every_n_steps: int | None
    keep_best: bool
    precision: str = "32-true"

    def __post_init__(self) -> None:
        lengths, depths = self.lengths, self.depths
        problems = (scorer_problems(self.scorer) + one_of("engine", self.engine, ENGINES)
                    + one_of("template", self.template, INSTRUCTIONS))
        if not (isinstance(lengths, (list, tuple)) and lengths):
            problems.append(f"lengths={shown(lengths)}: must be a list such as [short,1024,2048]")
        else:
            problems += [f"lengths={shown(lengths)}: {shown(n)} is neither short nor a number of tokens"
                         for n in lengths if n != SHORT and number("", n, 1, integer=True)]
        if not (isinstance(depths, (list, tuple)) and depths and not any(number("", d, 0, 1) for d in depths)):
            problems.append(f"depths={shown(depths)}: each depth must be a number in [0, 1] (0 = start, 1 = end of "
                            "the context)")
        problems += number("every_n_steps", self.every_n_steps, 1, integer=True, optional=True)
        if self.keep_best and not self.every_n_steps:
            problems.append("keep_best=true needs eval.every_n_steps (the steps it chooses from)")
        refuse(problems + number("max_new_tokens", self.max_new_tokens, 1, integer=True)
               + number("batch_size", self.batch_size, 1, integer=True) + flag("keep_best", self.keep_best)
               + number("batch_tokens", self.batch_tokens, 1, integer=True, optional=True)
               + flag("static_cache", self.static_cache) + flag("half_weights", self.half_weights))
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
    fits = [n for n in settings.lengths if n == SHORT or length_fits(int(n), max_length)]
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
        for length in fits:
            if length == SHORT:
                relevant = list(item.relevant)
                case_rng(settings.seed, item.id, SHORT).shuffle(relevant)
                cases.append(EvalCase(item.id, item.answers, SHORT, "-", render(relevant, item.question, settings.template)))
                continue
            for depth in settings.depths:
                try:
                    ctx = build_contexts(item, int(length), count_tokens, case_rng(settings.seed, item.id, length, depth),
                                         pool, depth=depth, template=settings.template)
                except ValueError:  # too few distractors for this length: the cell is left out, not the run
                    unfillable += 1
                    continue
                cases.append(EvalCase(item.id, item.answers, str(length), f"{depth:g}", ctx.long))
    if unfillable:
        log.warning("%d evaluation contexts left out: too few distractor passages to reach their length", unfillable)
    return cases


def length_fits(tokens: int, max_length: int) -> bool:
    """Whether an evaluation context of ``tokens`` leaves the template and the answer room (ANSWER_ROOM) within the
    model's ``max_length``; build_cases leaves the others out."""
    return tokens + ANSWER_ROOM <= max_length


def case_rng(seed: int, *case) -> random.Random:
    """The draws of one case (its distractors, or the evidence's order): the same whichever model is evaluated and
    whichever other lengths and depths are asked, so evaluations of different lengths share their common cases."""
    return random.Random(":".join(map(str, (seed, *case))))


def length_bucket(tokens: int) -> str:
    """LongBench-style length bands for fixed contexts: 0-4k, 4-8k, 8-16k, ... (upper bounds in K tokens)."""
    upper = 4
    while tokens > upper * 1024:
        upper *= 2
    return f"{upper // 2 if upper > 4 else 0}-{upper}k"


def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                   desc: str = "evaluating", precision: str = "32-true", batch_tokens: int | None = None,
                   static_cache: bool = False, half_weights: bool = False) -> list[str]:
    """Greedy answers in the prompts' order, computed under the autocast of Lightning's ``precision``. Prompts go
    longest first in left-padded batches of at most ``batch_size`` rows and ``batch_tokens`` tokens
    (solopo.generation.batching); with ``static_cache`` on a GPU, a static KV cache whose decoding step is replayed
    as a CUDA graph (solopo.generation.decoding); with ``half_weights``, copies of the weights in the autocast dtype
    (EvalSettings' default; off for a direct call, which keeps the model's own weights unless asked). A batch that
    runs out of GPU memory is answered in halves (batching.split_on_oom), each as a batch of its own."""
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    batches = budget_batches([len(e) for e in encoded], batch_size, batch_tokens, max_new_tokens)
    static = uses_static_cache(model, static_cache)

    def answer(rows: Sequence[int]) -> list[str]:
        ids, mask = left_padded_ids([encoded[i] for i in rows], tokenizer.pad_token_id, device)
        return _greedy_batch(model, tokenizer, ids, mask, max_new_tokens, static, precision)

    return generate_batches(model, batches, answer, static=static, half=half_weights, precision=precision, desc=desc)


def _greedy_batch(model, tokenizer, ids, mask, max_new_tokens: int, static: bool, precision: str) -> list[str]:
    """One left-padded batch's greedy answers: the static path decodes from a static cache, its step replayed as a
    CUDA graph on a GPU (solopo.generation.decoding), where the model's generation config adds no logits processor
    of its own; the other path is generate's."""
    with torch.no_grad(), autocast(ids.device, precision):
        if static and plain_decoding(model):
            new = decode(model, ids, mask, max_new_tokens, greedy_pick, tokenizer.pad_token_id, end_ids(model))
        else:
            new = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True)[:, ids.shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


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
                              precision=settings.precision, batch_tokens=settings.batch_tokens,
                              static_cache=settings.static_cache, half_weights=settings.half_weights)
    import_vllm("eval.engine")  # before the weights are written out for it
    # vLLM would otherwise size its KV cache for the model config's longest context, which may not fit
    engine_args = {"max_model_len": max_length, **(engine_args or {})}
    with saved_weights(model, tokenizer) as path:
        log.info("%s: vLLM engine on the weights written to %s", desc, path)
        return vllm_greedy_answers(path, tokenizer, prompts, settings.max_new_tokens, settings.seed, **engine_args)


def score_table(cases: Sequence[EvalCase], answers: Sequence[str], scorer: Scorer = SUB_EM) -> dict:
    """{"cells": [{length, depth, sub_em, f1, score, n, ci95}], "by_length": {length: score}, "average": score,
    "average_long": score over every long-context case, "scorer": its class, "n_by_length", "ci95_by_length",
    "n_long", "ci95_long", "scores": every case's score in columns (score_columns; score_rows reads it)}; means are
    over questions, score is ``scorer``'s (sub-EM by default, so every column but f1 is then sub-EM), ci95 the Wilson
    95% interval of a share (solopo.report.stats.wilson) and "scores" pairs two tables of the same cases (changes).

    An answer is scored whole, as the pair sampler scores its samples: under the cot template the
    reasoning comes first and sub-EM finds the gold answer anywhere in it, so evaluation and the
    share of correct samples measure the same thing."""
    cells: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    scores = []
    for case, answer in zip(cases, answers):
        score = checked_score(scorer, answer, case.answers, "eval.scorer")
        cells.setdefault((case.length, case.depth), []).append((sub_em(answer, case.answers), f1(answer, case.answers),
                                                                score))
        scores.append([case.item_id, case.length, case.depth, score])
    rows = [{"length": length, "depth": depth, "sub_em": _mean(s for s, _, _ in v), "f1": _mean(f for _, f, _ in v),
             "score": _mean(x for *_, x in v), "n": len(v), "ci95": list(wilson(sum(x for *_, x in v), len(v)))}
            for (length, depth), v in cells.items()]
    by_length: dict[str, list[float]] = {}
    for _, length, _, score in scores:
        by_length.setdefault(length, []).append(score)
    long_scores = [s for length, values in by_length.items() if length != SHORT for s in values]
    return {"cells": rows, "by_length": {k: _mean(v) for k, v in by_length.items()}, "scorer": type(scorer).__name__,
            "average": _mean(s for v in by_length.values() for s in v), "average_long": _mean(long_scores),
            "n_by_length": {k: len(v) for k, v in by_length.items()},
            "ci95_by_length": {k: list(wilson(sum(v), len(v))) for k, v in by_length.items()},
            "n_long": len(long_scores), "ci95_long": list(wilson(sum(long_scores), len(long_scores))),
            "scores": score_columns(scores)}


def score_columns(rows: Sequence[Sequence]) -> dict:
    """[[item, length, depth, score], ...] as {"items": [item, ...], "cases": [[length, depth], ...], "rows": [[item's
    index, case's index, score], ...]}: the same rows in the same order without each question's id and each case
    written out per row: a quarter of the bytes for the decisive study's 10-case evaluations."""
    items: dict[str, int] = {}
    cases: dict[tuple[str, str], int] = {}
    indexed = [[items.setdefault(item, len(items)), cases.setdefault((length, depth), len(cases)), score]
               for item, length, depth, score in rows]
    return {"items": list(items), "cases": [list(c) for c in cases], "rows": indexed}


def score_rows(table: dict) -> list[list]:
    """A table's per-case scores as [[item, length, depth, score], ...] in the order they were scored, from its
    columns or from the row list that tables written before the columns hold."""
    scores = table.get("scores") or []
    if isinstance(scores, list):
        return [list(row) for row in scores]
    items, cases = scores["items"], scores["cases"]
    return [[items[i], *cases[c], score] for i, c, score in scores["rows"]]


def changes(before: dict, after: dict) -> dict[str, Change] | None:
    """after - before by length and over the long contexts ("avg_long"), each a paired change with its 95% interval;
    None when the two tables did not score the same cases."""
    old_rows, new_rows = score_rows(before), score_rows(after)
    if [row[:3] for row in old_rows] != [row[:3] for row in new_rows]:
        return None
    groups: dict[str, list[tuple[float, float]]] = {}
    for (_, length, _, old), (*_, new) in zip(old_rows, new_rows):
        groups.setdefault(length, []).append((old, new))
        if length != SHORT:
            groups.setdefault("avg_long", []).append((old, new))
    return {key: paired_change([o for o, _ in pairs], [n for _, n in pairs]) for key, pairs in groups.items()}


def evaluate(model, tokenizer, items: Sequence[QAItem], pool: Sequence[str], settings: EvalSettings,
             count_tokens: Callable[[str], int], max_length: int, desc: str = "evaluating",
             engine_args: dict | None = None) -> dict:
    cases = build_cases(items, settings, count_tokens, pool, max_length)
    answers = answer_all(model, tokenizer, [c.prompt for c in cases], settings, max_length, desc, engine_args)
    table = score_table(cases, answers, settings.scorer)
    table["examples"] = [{"item": c.item_id, "length": c.length, "depth": c.depth, "answer": a, "gold": list(c.answers)}
                         for c, a in list(zip(cases, answers))[:20]]
    return table


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def format_table(tables: dict[str, dict]) -> str:
    """A markdown table: one row per checkpoint (e.g. base, trained), the scorer's score (%) per length and over the long contexts,
    each with its 95% interval and its number of cases; then, for each later checkpoint, its change from the first on
    the same cases, marked where the interval holds 0 (the data cannot tell it from no change)."""
    lengths = list(next(iter(tables.values()))["by_length"])
    lines = ["| model | " + " | ".join(str(n) for n in lengths) + " | avg long |", "|---" * (len(lengths) + 2) + "|"]
    for name, table in tables.items():
        cells = [_cell(table["by_length"][n], table["ci95_by_length"][n], table["n_by_length"][n]) for n in lengths]
        cells.append(_cell(table["average_long"], table["ci95_long"], table["n_long"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first, *later = tables
    for name in later:
        found = changes(tables[first], tables[name])
        if found:
            lines.append(f"{name} - {first}, {score_name(tables[first])} points [95% interval] on the same cases: " + "; ".join(
                f"{'avg long' if key == 'avg_long' else key} {_change(change)}" for key, change in found.items()))
    return "\n".join(lines)


def _cell(score: float, ci95: Sequence[float], n: int) -> str:
    return f"{points(score):.1f} [{points(ci95[0]):.0f}, {points(ci95[1]):.0f}] n={n}"


def _change(change: Change) -> str:
    text = f"{points(change.difference):+.1f} [{points(change.low):+.0f}, {points(change.high):+.0f}] n={change.n}"
    return text + (" (within the interval: no measured change)" if change.within_noise else "")
