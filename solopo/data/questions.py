"""Questions of 1 to 3 hops over a World: start at an entity, follow relations to other entities, and
ask one fact of the last. The passages of the entities on that chain, and only they, answer it."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from solopo.data.entities import RELATIONS, World
from solopo.data.schema import QAItem

HOPS = (1, 2, 3)
# How an entity reached through a relation is named: the phrase wraps the name of the entity before it.
_VIA = {
    "employer": "the organisation that employs {}",
    "founder": "the founder of {}",
    "birthplace": "the city where {} was born",
    "headquarters": "the headquarters city of {}",
    "creator": "the creator of {}",
    "publisher": "the publisher of {}",
}
# The facts a question can ask, and how.
_ASK = {
    "occupation": "What is the occupation of {}?",
    "birthplace": "In which city was {} born?",
    "birth_year": "In which year was {} born?",
    "employer": "Which organisation does {} work for?",
    "headquarters": "In which city is {} headquartered?",
    "founded": "What is the founding year of {}?",
    "founder": "Who founded {}?",
    "province": "In which province is {}?",
    "river": "Which river runs through {}?",
    "city_founded": "What is the founding year of {}?",
    "creator": "Who created {}?",
    "year": "In which year did {} come out?",
    "publisher": "Which organisation published {}?",
}


@dataclass(frozen=True)
class Question:
    item: QAItem
    chain: tuple[str, ...]  # the entities whose passages answer it, in reasoning order
    relations: tuple[str, ...]  # the relation followed from each entity of the chain; the last one is asked


def sample_questions(world: World, n: int, rng: random.Random, split: str) -> list[Question]:
    """``n`` questions of the world, a third of each hop count (the remainder to the fewest hops), shuffled."""
    pools: dict[int, list[tuple[str, tuple[str, ...]]]] = {hops: [] for hops in HOPS}
    for start in world.facts:
        for relations in _paths(world, (start,), ()):
            pools[len(relations)].append((start, relations))
    picked = []
    for index, hops in enumerate(HOPS):
        wanted = n // len(HOPS) + (index < n % len(HOPS))
        if wanted > len(pools[hops]):
            raise ValueError(f"the {split} world has {len(pools[hops])} questions of {hops} hops; asked for {wanted}")
        picked += rng.sample(pools[hops], wanted)
    rng.shuffle(picked)
    return [ask(world, start, relations, split, rng) for start, relations in picked]


def _paths(world: World, chain: tuple[str, ...], relations: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Relation paths from chain[-1] through entities not yet on the chain, up to the longest hop count.
    A question whose answer is on its own chain ("who founded the organisation that employs X?" when X
    did) is left out: its answer is named in the question."""
    for relation, value in world.facts[chain[-1]].items():
        if value in chain:
            continue
        if relation in _ASK:
            yield relations + (relation,)
        if relation in _VIA and len(relations) + 1 < HOPS[-1]:
            yield from _paths(world, chain + (value,), relations + (relation,))


def ask(world: World, start: str, relations: tuple[str, ...], split: str, rng: random.Random) -> Question:
    """The question that follows ``relations`` from ``start``, with the passages of its chain as evidence."""
    chain, phrase = (start,), start
    for relation in relations[:-1]:
        chain += (world.facts[chain[-1]][relation],)
        phrase = _VIA[relation].format(phrase)
    relation = relations[-1]
    answer = world.facts[chain[-1]][relation]
    aliases = (f"{answer} City",) if RELATIONS[relation][1] == "city" else ()  # the passages write cities both ways
    item = QAItem(id=f"{split}:{'.'.join(relations)}:{start}", question=_ASK[relation].format(phrase),
                  answers=(answer, *aliases), relevant=tuple(world.passages[entity] for entity in chain),
                  wrong_answers=_wrong_answers(world, chain, relation, answer, rng))
    return Question(item, chain, relations)


def _wrong_answers(world: World, chain: tuple[str, ...], relation: str, answer: str, rng: random.Random,
                   n: int = 4) -> tuple[str, ...]:
    """The most tempting first: the value read off the wrong hop (the same fact of an earlier entity, another
    fact of the answer's kind on the chain, an entity of that kind on it), then other values of the relation."""
    kind = RELATIONS[relation][1]
    misread = [world.facts[entity][relation] for entity in reversed(chain[:-1]) if relation in world.facts[entity]]
    misread += [value for entity in reversed(chain) for other, value in world.facts[entity].items()
                if RELATIONS[other][1] == kind]
    misread += [entity for entity in chain if world.kinds[entity] == kind]
    others = rng.sample(world.values[relation], min(n + 1, len(world.values[relation])))
    return tuple(dict.fromkeys(value for value in misread + others if value != answer))[:n]
