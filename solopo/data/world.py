"""The built-in QA data: multi-hop questions over seeded fictional worlds, one world per split.

Each split (train, val, test) has its own world, built from its own derived seed and from name words
that no other split's world can draw (see solopo.data.entities), so the splits share no question,
entity or passage. A world's passages are its split's distractor pool: they read exactly like the
evidence (other founders, other cities), so finding the right passage is the only way to answer,
and none of them states the fact a question asks (each fact has one passage, its entity's own).
"""
from __future__ import annotations

import random

from solopo.data.entities import Namer, World, build_world
from solopo.data.questions import Question, sample_questions
from solopo.data.schema import Splits

SPLITS = ("train", "val", "test")


def qa_items(n_train: int, n_val: int, seed: int = 0, n_test: int = 0, min_entities: int = 400) -> Splits:
    """Deterministic train/validation/test questions of 1, 2 and 3 hops (a third each).

    A world holds ``min_entities`` entities (one passage each, about 35 tokens) or more when its split
    asks for many questions; its pool of about 14K tokens by default bounds the long contexts it can
    fill, so raise ``min_entities`` for longer ones. The train world is always built: its passages are
    ``Splits.distractors``; the val and test worlds are built when asked for items.
    """
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if min(counts.values()) < 0:
        raise ValueError(f"item counts must be >= 0; got n_train={n_train}, n_val={n_val}, n_test={n_test}")
    built = {split: split_questions(seed, split, n, min_entities)
             for split, n in counts.items() if n or split == "train"}

    def items(split: str) -> list:
        return [question.item for question in built[split][1]] if split in built else []

    def pool(split: str) -> tuple[str, ...]:
        return tuple(built[split][0].passages.values()) if split in built else ()

    return Splits(train=items("train"), val=items("val"), test=items("test"), distractors=pool("train"),
                  val_distractors=pool("val"), test_distractors=pool("test"))


def split_questions(seed: int, split: str, n: int, min_entities: int = 400) -> tuple[World, list[Question]]:
    """One split's world and ``n`` questions over it; the same arguments give the same world and questions."""
    rng = random.Random(f"solopo.qa:{seed}:{split}")
    # About 3.4 one-hop questions per entity: n // 6 entities hold the third of n that are one-hop, twice over.
    world = build_world(rng, max(min_entities, n // 6), Namer(rng, owner=SPLITS.index(split), owners=len(SPLITS)))
    return world, sample_questions(world, n, rng, split)
