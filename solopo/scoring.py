"""Answer scoring for QA: sampled responses (which may be chosen, which rejected) and evaluation answers.

A scorer maps (prediction, gold answers) to a score in [0, 1] and says by ``correct(score)`` whether a sampled
response counts as right (the pair sampler chooses among the right ones and rejects among the others). Built in:
sub-EM (the paper's test, the default), exact match, token F1 with a threshold, a regex, and any function
(FromFunction). ``data.sampling.scorer`` and ``eval.scorer`` name one with ``_target_``; a class of one's own that has
``__call__`` and ``correct`` works too. Every metric reads answers through the SQuAD/LongBench normalisation.

Gold answers that normalise to nothing (an answer of only articles or punctuation) are ignored:
the empty string is contained in every prediction and would score everything correct.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union, runtime_checkable

from solopo.settings.fields import ConfigError, locate, number, refuse

Answers = Union[Sequence[str], str]
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@runtime_checkable
class Scorer(Protocol):
    """scorer(prediction, answers) -> a score in [0, 1]; scorer.correct(score) -> whether that is a right answer."""

    def __call__(self, prediction: str, answers: Answers) -> float: ...

    def correct(self, score: float) -> bool: ...


def points(share: float) -> float:
    """A mean of answer scores in [0, 1] (sub-EM, F1, ...) as points, 0-100: the one scale of every score solopo
    states: tables, results.json's ``eval_summary`` (held-out questions and benchmarks alike), logged metrics, reports
    and plots. Held-out evaluation tables keep their shares in [0, 1] beside the per-case scores and intervals they are
    computed from, and say so; a benchmark's tables are in points already (its subsets' scores, as papers give them)."""
    return 100 * share


# How tables, plots and reports name a scorer's score (a table records its scorer's class name, score_table)
SCORE_NAMES = {"SubEM": "sub-EM", "ExactMatch": "exact match", "TokenF1": "token F1", "Regex": "regex match",
               "FromFunction": "custom score"}


def score_name(table: dict) -> str:
    """The name of an evaluation table's score: its scorer's (sub-EM for a table written before tables named one)."""
    kind = table.get("scorer", "SubEM")
    return SCORE_NAMES.get(kind, kind)


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

    Exactly the SQuAD/LongBench rule (ASCII punctuation only, in this order), so scores compare
    with published ones: "The U.S.A.!" -> "usa".
    """
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def sub_em(prediction: str, answers: Answers) -> float:
    """1.0 when some normalised gold answer is a substring of the normalised prediction, else 0.0.

    The containment is by characters, as the paper defines it: the gold "no" is found in
    "i do not know", so yes/no questions are scored generously.
    """
    predicted = normalize_answer(prediction)
    return float(any(gold in predicted for gold in _normalized_golds(answers)))


def exact_match(prediction: str, answers: Answers) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) in _normalized_golds(answers))


def f1(prediction: str, answers: Answers) -> float:
    """Token-level F1 between the normalised prediction and each normalised gold answer; the best one.

    LongBench's qa_f1_score: shared = |pred ∩ gold| (tokens, with multiplicity), P = shared/|pred|,
    R = shared/|gold|, F1 = 2PR/(P+R), 0 when nothing is shared; max over the gold answers."""
    predicted = normalize_answer(prediction).split()
    return max((_token_f1(predicted, gold.split()) for gold in _normalized_golds(answers)), default=0.0)


def _token_f1(predicted: list[str], gold: list[str]) -> float:
    shared = sum((Counter(predicted) & Counter(gold)).values())  # tokens in both, with multiplicity
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(gold)
    return 2 * precision * recall / (precision + recall)


def _normalized_golds(answers: Answers) -> list[str]:
    # A bare string is one answer; iterating it would score against its characters.
    answers = (answers,) if isinstance(answers, str) else answers
    if not answers:
        raise ValueError("no gold answers to score against")
    return [gold for gold in map(normalize_answer, answers) if gold]


@dataclass(frozen=True)
class _Thresholded:
    """A score counts as correct at or above ``threshold``."""

    threshold: float = 1.0

    def __post_init__(self) -> None:
        refuse(number("threshold", self.threshold, 0, 1))

    def correct(self, score: float) -> bool:
        return score >= self.threshold


@dataclass(frozen=True)
class SubEM(_Thresholded):
    """sub_em: a gold answer inside the prediction (the paper's rule for sampled responses)."""

    def __call__(self, prediction: str, answers: Answers) -> float:
        return sub_em(prediction, answers)


@dataclass(frozen=True)
class ExactMatch(_Thresholded):
    """exact_match: the whole prediction is a gold answer, after normalisation."""

    def __call__(self, prediction: str, answers: Answers) -> float:
        return exact_match(prediction, answers)


@dataclass(frozen=True)
class TokenF1(_Thresholded):
    """f1 (LongBench's QA F1); a sample is correct from ``threshold`` on."""

    threshold: float = 0.5

    def __call__(self, prediction: str, answers: Answers) -> float:
        return f1(prediction, answers)


@dataclass(frozen=True)
class Regex(_Thresholded):
    """1.0 when ``pattern`` is found in the prediction, with ``{answer}`` standing for each gold answer taken
    literally (case-insensitive); the default finds a gold answer as whole words: "in Paris." for "Paris", not
    "Parisian"."""

    pattern: str = r"\b{answer}\b"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            re.compile(self.pattern.replace("{answer}", "x"))
        except re.error as err:
            refuse([f"pattern={self.pattern}: not a regular expression ({err})"])

    def __call__(self, prediction: str, answers: Answers) -> float:
        golds = (answers,) if isinstance(answers, str) else answers
        patterns = {self.pattern.replace("{answer}", re.escape(gold.strip())) for gold in golds if gold.strip()}
        return float(any(re.search(p, prediction, re.IGNORECASE) for p in patterns))


@dataclass(frozen=True)
class FromFunction(_Thresholded):
    """Any function fn(prediction, answers) -> score in [0, 1], given as a dotted path ("mypkg.metrics.judge")."""

    fn: str = "solopo.scoring.sub_em"

    def __post_init__(self) -> None:
        super().__post_init__()
        found, problems = locate("fn", self.fn)
        refuse(problems or ([] if callable(found) else [f"fn={self.fn}: not a function"]))

    def __call__(self, prediction: str, answers: Answers) -> float:
        return float(self.function()(prediction, answers))

    def function(self) -> Callable:
        return locate("fn", self.fn)[0]


SUB_EM = SubEM()


def checked_score(scorer: Callable, prediction: str, answers: Answers, key: str) -> float:
    """``scorer``'s score of one answer as a float, or one line naming ``key`` (ConfigError) where it is not a number
    in [0, 1]: every mean, Wilson interval, threshold and points figure reads a score as a share of right answers."""
    score = scorer(prediction, answers)
    try:
        value = float(score)
    except (TypeError, ValueError):
        value = math.nan
    if 0 <= value <= 1:
        return value
    name = getattr(scorer, "fn", None) or type(scorer).__name__
    raise ConfigError(f"{key}: {name} scored the answer {prediction[:60]!r} as {score!r}; a scorer returns a number "
                      f"in [0, 1] (solopo.scoring)")


def scorer_problems(scorer: Any) -> list[str]:
    """The check of a settings field that holds a scorer (SamplingSettings, EvalSettings)."""
    return [] if isinstance(scorer, Scorer) else [f"scorer={scorer!r}: not a scorer (one has __call__(prediction, "
                                                  "answers) and correct(score)); see solopo.scoring"]


def identity(scorer: Scorer) -> dict:
    """What a cache key holds of a scorer: its class, its parameters (a dataclass's fields, else its repr) and a digest
    of its code (FromFunction's: the function's), so that editing a scorer of one's own recomputes what it scored."""
    kind = type(scorer)
    params = dataclasses.asdict(scorer) if dataclasses.is_dataclass(scorer) else repr(scorer)
    code = scorer.function() if isinstance(scorer, FromFunction) else kind
    return {"scorer": f"{kind.__module__}.{kind.__qualname__}", "params": params, "code": code_digest(code)}


def code_digest(code: Any) -> str:
    """sha256 of a function's or class's source; where Python has none (a compiled module, a function made at run
    time), of the file of its module, else of its qualified name."""
    try:
        text = inspect.getsource(code)
    except (OSError, TypeError):
        module = inspect.getmodule(code)
        path = getattr(module, "__file__", None)
        text = Path(path).read_text(errors="replace") if path else f"{code.__module__}.{code.__qualname__}"
    return hashlib.sha256(text.encode()).hexdigest()


def settings_identity(settings: Any) -> dict:
    """A settings dataclass as plain data for a cache key: its fields, its ``scorer`` by identity()."""
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    return {**fields, "scorer": identity(fields["scorer"])}


def as_scorer(found: Callable, options: dict) -> Scorer:
    """The scorer a config's ``_target_`` names: a class made with the options, or a plain function wrapped in
    FromFunction (its only option: threshold)."""
    if isinstance(found, type):
        return found(**options)
    return FromFunction(fn=f"{found.__module__}.{found.__qualname__}", **options)
