"""2WikiMultihopQA, one JSON list in the HotpotQA layout (`_id`, `question`, `answer`, `type`,
`supporting_facts`, `context`) plus `evidences` (triples, not used here); parsed as HotpotQA.

Unlike HotpotQA's, its sentences carry no leading space, so they are joined with one.
"""
from __future__ import annotations

from solopo.data.formats.hotpotqa import load_layout
from solopo.data.schema import Splits


def load(path: str, n_val: int = 0, seed: int = 0, n_train: int | None = None) -> Splits:
    return load_layout(path, n_val, seed, n_train, sentence_separator=" ")
