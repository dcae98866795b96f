"""What a saved model trained on, written beside its weights (save_model) so that a later evaluation can tell the
questions it holds out from those the model has seen.

The held-out questions of a file are the last data.source.n_val items of a seeded shuffle, so an evaluation with
another n_val or seed than the training run's draws other items, trained-on ones among them, and scores memory as
long-context skill. The record keeps a digest per training item and the training run's data.source settings (the
split to name in a message). An item is known by its question and answers, not by its id or its place in the file:
ids may be line numbers, and the same question in another file or order is still one the model has seen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from solopo.cache import atomic_write_text, digest, reading

RECORD = "solopo_trained_on.json"  # in the saved model's folder, beside config.json


def item_digest(item) -> str:
    """A question's identity: its text and its answers (a QAItem's or a PreferenceExample's), 64 bits of sha256."""
    return digest("trained_on", item.question, sorted(item.answers))[:16]


@dataclass(frozen=True)
class TrainedOn:
    """A saved model's record: the digests of the items its run trained on and that run's data.source settings."""

    items: frozenset[str]
    source: dict  # data.source as the training run resolved it: n_val, seed, path, n_train, ...

    def seen(self, items: Sequence) -> list:
        """Those of ``items`` the model trained on, in their order."""
        return [item for item in items if item_digest(item) in self.items]


def write_record(folder: Path, items: Iterable, source: dict) -> None:
    """The record of a run that trained on ``items`` (its training split: every item a pair could come from, skipped
    or not) under ``source``."""
    atomic_write_text(Path(folder) / RECORD, json.dumps({"source": source,
                                                         "items": sorted({item_digest(i) for i in items})}))


def read_record(model: str) -> Optional[TrainedOn]:
    """The record of ``model`` (a local folder), or None where it has none: a model saved before the record existed,
    a hub id, the embedded default."""
    path = Path(model) / RECORD
    if not path.is_file():
        return None
    with reading(path):
        found = json.loads(path.read_text(encoding="utf-8"))
    return TrainedOn(frozenset(found["items"]), found["source"])
