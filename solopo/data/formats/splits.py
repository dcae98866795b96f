"""From parsed records to Splits: wrong answers, the shared distractor pool, the seeded split."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from solopo.data.formats.passages import dedupe
from solopo.data.formats.wrong_answers import add_wrong_answers
from solopo.data.schema import PreferenceExample, QAItem, Splits
from solopo.records import DataFileError, Where, check_unique_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parsed:
    item: QAItem
    group: str  # wrong answers come first from items of the same group (question type, dataset)
    passages: tuple[str, ...]  # every paragraph of the record, supporting or not, for the shared pool
    where: Where  # the record's place in its file, for messages


def to_splits(parsed: Sequence[Parsed], path: str, n_val: int, seed: int, n_train: int | None,
              more_passages: Iterable[str] = ()) -> Splits:
    """Items with wrong answers, split; the pool holds every paragraph of the file (RULER-style:
    an item's long context is filled from other items' passages)."""
    check_unique_ids((p.where, p.item.id) for p in parsed)
    items = add_wrong_answers([p.item for p in parsed], [p.group for p in parsed], seed)
    pool = dedupe([passage for p in parsed for passage in p.passages] + list(more_passages))
    return split_items(items, pool, path, n_val, seed, n_train)


def split_items(items: Sequence[QAItem | PreferenceExample], distractors: tuple[str, ...], path: str,
                n_val: int, seed: int, n_train: int | None) -> Splits:
    """Validation = the last n_val items of a seeded shuffle; training = the rest, capped at ``n_train``.

    Capping after the split keeps the validation items the same whatever n_train is.
    """
    if n_val < 0 or (n_train is not None and n_train < 1):
        raise ValueError(f"{path}: n_val must be >= 0 and n_train >= 1 or null; got n_val={n_val}, n_train={n_train}")
    if n_val >= len(items):
        raise DataFileError(f"{path}: {len(items)} usable records cannot give data.source.n_val={n_val} validation "
                            f"items and at least one training item; set data.source.n_val to at most {len(items) - 1}")
    if 2 * n_val > len(items):  # a small file: most of it would go unseen by training, which nothing else says
        log.warning("%s: data.source.n_val=%d of its %d usable records go to validation, %d to training",
                    path, n_val, len(items), len(items) - n_val)
    order = list(items)
    random.Random(seed).shuffle(order)
    first_val = len(order) - n_val
    return Splits(train=order[:first_val][:n_train], val=order[first_val:], distractors=distractors)
