"""Evaluation of answers: the QA metrics (sub-EM, F1) in metrics.py."""
from solopo.eval.metrics import f1, normalize_answer, sub_em

__all__ = ["f1", "normalize_answer", "sub_em"]
