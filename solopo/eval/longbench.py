"""Benchmarks with a fixed long context per question, scored per subset as their papers report them: LongBench v1's
QA subsets (here) and RULER-style QA files (solopo.eval.ruler).

LongBench's own rules, as its pred.py and metrics.py apply them: each subset has its prompt template (with
{context} and {input}) and its number of new tokens; a prompt longer than the budget keeps its first and its last
budget/2 tokens (the middle of the context goes, never the instruction or the question); the answer is greedy and
scored by QA F1 over LongBench's normalisation (solopo.scoring.f1), the best over the gold answers; a subset's score
is the mean x 100, and the benchmark's the mean of its subsets. The templates and token counts are in
conf/eval/longbench.yaml.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from solopo.data.tokenize import encode_prompt
from solopo.eval.longctx import EvalSettings, answer_all
from solopo.records import DataFileError, read_jsonl, text, text_list
from solopo.scoring import Scorer, TokenF1, checked_score, points
from solopo.report.stats import equal_weight_mean, wilson
from solopo.settings.fields import number, refuse

LONGBENCH_QA = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique")


@dataclass(frozen=True)
class Question:
    id: str
    input: str  # the question
    context: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Subset:
    """One subset of a benchmark: its questions, its template (with {context} and {input}), its answer length."""

    name: str
    template: str
    max_new_tokens: int
    questions: tuple[Question, ...]


def read_questions(path: str, n_items: int | None, answer_keys: tuple[str, ...] = ("answers",)) -> tuple[Question, ...]:
    """The first ``n_items`` (all with None) records of a jsonl file of {"input", "context", "answers", "_id"} (the
    gold answers under the first of ``answer_keys`` a record has); a malformed record stops with one line naming the
    file, line and field."""
    questions = []
    for where, record in read_jsonl(path)[:n_items]:
        qid = str(record.get("_id", record.get("index", where.place)))  # LongBench's _id, RULER's index
        key = next((k for k in answer_keys if k in record), answer_keys[0])
        # input and context as the file has them: pred.py fills its template with them unstripped
        questions.append(Question(qid, text(record, "input", where, strip=False),
                                  text(record, "context", where, strip=False),
                                  tuple(text_list(record, key, where))))
    return tuple(questions)


def check_template(key: str, template: str) -> list[str]:
    """The problem with a prompt template that has no place for the context or the question."""
    missing = [slot for slot in ("{context}", "{input}") if slot not in str(template)]
    return [f"{key}: the template lacks {' and '.join(missing)}"] if missing else []


@dataclass(frozen=True)
class LongBench:
    """LongBench v1 QA from local files: ``path`` is the folder of the official release's <subset>.jsonl files;
    ``subsets``: {name: {template, max_new_tokens}} (conf/eval/longbench.yaml: the paper's six); ``max_prompt_tokens``:
    the prompt budget before the chat template (LongBench's model2maxlen; null: the model's max_length less the
    chat template and the answer); ``n_items``: the first n questions of each subset (null: all); ``only``: the
    subsets to evaluate on, by name (null: every one of ``subsets``)."""

    path: str
    subsets: dict
    max_prompt_tokens: int | None = None
    n_items: int | None = None
    only: list | None = None

    def __post_init__(self) -> None:
        problems = number("max_prompt_tokens", self.max_prompt_tokens, 1, integer=True, optional=True)
        problems += number("n_items", self.n_items, 1, integer=True, optional=True)
        for name, spec in dict(self.subsets or {}).items():
            problems += check_template(f"subsets.{name}.template", spec.get("template"))
            problems += number(f"subsets.{name}.max_new_tokens", spec.get("max_new_tokens"), 1, integer=True)
        refuse(problems + ([] if self.subsets else ["subsets=null: name at least one subset"]) + self._only_problems())

    def _only_problems(self) -> list[str]:
        if self.only is None:
            return []
        names = list(self.subsets or {})
        if isinstance(self.only, str) or not list(self.only):
            return [f"only={self.only!r}: a list of subsets, e.g. [hotpotqa, musique] (null: all of {', '.join(names)})"]
        unknown = [str(name) for name in self.only if name not in names]
        return [f"only: no subset {', '.join(unknown)}; choose among {', '.join(names)}"] if unknown else []

    def load(self) -> list[Subset]:
        """Every subset's questions, read before any model loads: a missing file or a bad record is one line."""
        if not os.path.isdir(self.path):
            raise DataFileError(f"{self.path}: eval.benchmark.path must be the folder of LongBench's <subset>.jsonl")
        return [Subset(name, spec["template"], spec["max_new_tokens"],
                       read_questions(os.path.join(self.path, f"{name}.jsonl"), self.n_items))
                for name, spec in self.subsets.items() if self.only is None or name in self.only]

    def scorer(self, configured: Scorer) -> Scorer:
        """LongBench's QA F1 whatever eval.scorer says: the paper's numbers are in that metric."""
        return TokenF1()


def middle_truncated(tokenizer, prompt: str, budget: int) -> tuple[str, bool]:
    """The prompt, or when it has more than ``budget`` tokens its first and last budget//2 tokens joined (as
    LongBench's pred.py cuts: by the tokenizer's own ids, special tokens dropped on decoding); and whether it was
    cut."""
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) <= budget:
        return prompt, False
    half = budget // 2
    return (tokenizer.decode(ids[:half], skip_special_tokens=True)
            + tokenizer.decode(ids[-half:], skip_special_tokens=True)), True


def prompts_of(subset: Subset, tokenizer, max_length: int, max_prompt_tokens: int | None) -> tuple[list[str], int]:
    """The subset's prompts, cut in the middle to the budget, and how many were cut."""
    chat = len(encode_prompt(tokenizer, ""))  # the chat template's own tokens around the user message
    budget = max_prompt_tokens or max_length - subset.max_new_tokens - chat
    cut = [middle_truncated(tokenizer, subset.template.format(context=q.context, input=q.input), budget)
           for q in subset.questions]
    return [prompt for prompt, _ in cut], sum(was_cut for _, was_cut in cut)


def run_benchmark(benchmark, subsets: Sequence[Subset], model, tokenizer, settings: EvalSettings, max_length: int,
                  engine_args: dict | None = None) -> dict:
    """{"subsets": {name: {"score", "n", "truncated"}}, "average", "metric", "examples"}: each subset's greedy
    answers scored by the benchmark's scorer, x 100, and the mean over subsets (each counts once, as papers report)."""
    scorer = benchmark.scorer(settings.scorer)
    table: dict = {"benchmark": type(benchmark).__name__, "metric": type(scorer).__name__, "subsets": {},
                   "examples": []}
    for subset in subsets:
        prompts, truncated = prompts_of(subset, tokenizer, max_length, benchmark.max_prompt_tokens)
        per_subset = dataclasses.replace(settings, max_new_tokens=subset.max_new_tokens)
        answers = answer_all(model, tokenizer, prompts, per_subset, max_length, f"evaluating {subset.name}",
                             engine_args)
        table["subsets"][subset.name] = subset_score(subset, answers, scorer) | {"truncated": truncated}
        table["examples"] += [{"subset": subset.name, "item": q.id, "answer": a, "gold": list(q.answers)}
                              for q, a in list(zip(subset.questions, answers))[:5]]
    rows = table["subsets"].values()
    average, low, high = equal_weight_mean([row["score"] / 100 for row in rows], [row["n"] for row in rows])
    table["average"], table["ci95_average"] = points(average), [points(low), points(high)]
    return table


def subset_score(subset: Subset, answers: Sequence[str], scorer: Callable[[str, Sequence[str]], float]) -> dict:
    """{"score": 100 x the mean score of the subset's answers, "n": questions, "ci95": its 95% interval (points)}: the
    Wilson interval of the mean of scores in [0, 1], as a held-out table's cell has it (conservative for F1)."""
    scores = [checked_score(scorer, answer, q.answers, "eval.scorer") for q, answer in zip(subset.questions, answers)]
    return {"score": points(sum(scores) / max(len(scores), 1)), "n": len(scores),
            "ci95": [points(bound) for bound in wilson(sum(scores), len(scores))]}


def format_benchmark(tables: dict[str, dict]) -> str:
    """A markdown table: one row per model, a column per subset and their average (scores x 100), each with its 95%
    interval and its number of questions (tables written before they held them: the score alone)."""
    names = list(next(iter(tables.values()))["subsets"])
    lines = ["| model | " + " | ".join(names) + " | avg |", "|---" * (len(names) + 2) + "|"]
    for model, table in tables.items():
        rows = [table["subsets"][name] for name in names]
        cells = [_cell(row["score"], row.get("ci95"), row["n"]) for row in rows]
        cells.append(_cell(table["average"], table.get("ci95_average"), sum(row["n"] for row in rows)))
        lines.append(f"| {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _cell(score: float, ci95, n: int) -> str:
    return f"{score:.1f}" if ci95 is None else f"{score:.1f} [{ci95[0]:.0f}, {ci95[1]:.0f}] n={n}"
