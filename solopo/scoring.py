"""Answer metrics for QA: sub-EM (the paper's correctness test for sampled responses) and token F1
(LongBench's QA score), over the SQuAD/LongBench answer normalisation.

Gold answers that normalise to nothing (an answer of only articles or punctuation) are ignored:
the empty string is contained in every prediction and would score everything correct.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

    Exactly the SQuAD/LongBench rule (ASCII punctuation only, in this order), so scores compare
    with published ones: "The U.S.A.!" -> "usa".
    """
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def sub_em(prediction: str, answers: Sequence[str] | str) -> float:
    """1.0 when some normalised gold answer is a substring of the normalised prediction, else 0.0.

    The containment is by characters, as the paper defines it: the gold "no" is found in
    "i do not know", so yes/no questions are scored generously.
    """
    predicted = normalize_answer(prediction)
    return float(any(gold in predicted for gold in _normalized_golds(answers)))


def f1(prediction: str, answers: Sequence[str] | str) -> float:
    """Token-level F1 between the normalised prediction and each normalised gold answer; the best one."""
    predicted = normalize_answer(prediction).split()
    return max((_token_f1(predicted, gold.split()) for gold in _normalized_golds(answers)), default=0.0)


def _token_f1(predicted: list[str], gold: list[str]) -> float:
    shared = sum((Counter(predicted) & Counter(gold)).values())  # tokens in both, with multiplicity
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(gold)
    return 2 * precision * recall / (precision + recall)


def _normalized_golds(answers: Sequence[str] | str) -> list[str]:
    # A bare string is one answer; iterating it would score against its characters.
    answers = (answers,) if isinstance(answers, str) else answers
    if not answers:
        raise ValueError("no gold answers to score against")
    return [gold for gold in map(normalize_answer, answers) if gold]
