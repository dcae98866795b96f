"""A seeded fictional world of people, organisations and cities, and multi-hop questions over it.

Names are made from syllables, so no model can answer from memory; distractor passages
come from the same world and read exactly like the evidence (other founders, other
cities), so finding the right passage is the only way to answer.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from solopo.data.schema import QAItem, Splits

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
_CODAS = ["", "", "n", "r", "s", "th", "l", "m", "x"]
_OCCUPATIONS = ["engineer", "painter", "chemist", "architect", "historian", "composer", "surgeon", "botanist"]
_ORG_KINDS = [("Labs", "research laboratory"), ("Works", "manufacturing company"), ("Guild", "trade guild"),
              ("Press", "publishing house"), ("Institute", "institute"), ("Foundry", "foundry")]


@dataclass
class _Person:
    name: str
    city: str
    year: int
    occupation: str
    employer: str = ""


@dataclass
class _Org:
    name: str
    kind: str
    city: str
    year: int
    founder: str


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).capitalize()


def _unique(rng: random.Random, n: int, make) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = make()
        if name not in names:
            names.append(name)
    return names


def _build_world(rng: random.Random, n_people: int, n_orgs: int, n_cities: int):
    cities = _unique(rng, n_cities, lambda: _word(rng, 2))
    people = [
        _Person(name, rng.choice(cities), rng.randint(1890, 1990), rng.choice(_OCCUPATIONS))
        for name in _unique(rng, n_people, lambda: f"{_word(rng, 2)} {_word(rng, 2)}")
    ]
    orgs = []
    for name in _unique(rng, n_orgs, lambda: _word(rng, 2)):
        suffix, kind = rng.choice(_ORG_KINDS)
        founder = rng.choice(people)
        orgs.append(_Org(f"{name} {suffix}", kind, rng.choice(cities), founder.year + rng.randint(25, 60), founder.name))
    for person in people:
        person.employer = rng.choice(orgs).name
    return cities, people, orgs


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _person_passage(p: _Person) -> str:
    return (f"{p.name} is {_a(p.occupation)} who was born in {p.city} in {p.year}. "
            f"{p.name} has spent most of a long career working for {p.employer}.")


def _org_passage(o: _Org) -> str:
    return (f"{o.name} is {_a(o.kind)} with its headquarters in {o.city}. "
            f"It was founded in {o.year} by {o.founder}.")


def qa_items(n_train: int, n_val: int, seed: int = 0, n_people: int = 120, n_orgs: int = 40, n_cities: int = 30) -> Splits:
    """Deterministic train/validation questions of 1 and 2 hops; the splits share no question."""
    rng = random.Random(seed)
    cities, people, orgs = _build_world(rng, n_people, n_orgs, n_cities)
    person_by_name = {p.name: p for p in people}
    org_by_name = {o.name: o for o in orgs}
    passages = {p.name: _person_passage(p) for p in people} | {o.name: _org_passage(o) for o in orgs}

    def item(kind: str, question: str, answer: str, hops: list[str], shortcut: str, pool: list[str]) -> QAItem:
        # The most tempting wrong answer is the value read off the wrong hop (the shortcut).
        wrong = [shortcut] if shortcut != answer else []
        wrong += [w for w in rng.sample(pool, 3) if w != answer and w not in wrong]
        relevant = tuple(passages[h] for h in hops)
        return QAItem(id=f"{kind}:{hops[0]}", question=question, answers=(answer,), relevant=relevant,
                      wrong_answers=tuple(wrong))

    candidates = []
    for p in people:
        candidates.append(item("birthplace", f"In which city was {p.name} born?", p.city, [p.name],
                               org_by_name[p.employer].city, cities))
        org = org_by_name[p.employer]
        candidates.append(item("employer_city", f"In which city is the organisation that {p.name} works for headquartered?",
                               org.city, [p.name, org.name], p.city, cities))
    for o in orgs:
        founder = person_by_name[o.founder]
        candidates.append(item("founder", f"Who founded {o.name}?", o.founder, [o.name], rng.choice(people).name,
                               [p.name for p in people]))
        candidates.append(item("founder_city", f"In which city was the founder of {o.name} born?", founder.city,
                               [o.name, founder.name], o.city, cities))
    if n_train + n_val > len(candidates):
        raise ValueError(f"the built-in QA world has {len(candidates)} questions; asked for {n_train} + {n_val}")
    rng.shuffle(candidates)
    # Every other passage of the world is a distractor: same style, other people and places.
    return Splits(train=candidates[:n_train], val=candidates[n_train : n_train + n_val],
                  distractors=tuple(passages.values()))
