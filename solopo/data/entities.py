"""A seeded fictional world: people, organisations, cities and creative works, one passage each.

Every fact ``(entity, relation) -> value`` is stated by one passage only, the entity's own; other
passages name the entity at most as the value of one of their own facts ("works for X"). A
question about a fact therefore has exactly one source, and every other passage of the world can
pad a long context without repeating or contradicting it.

Names are made from syllables, so no model can answer from memory. Each name word belongs, by a
hash of its spelling, to one of several owners (the data splits), and a world draws only the words
of its owner: worlds of different owners cannot share a name, whatever their seeds or sizes.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
_CODAS = ["", "", "n", "r", "s", "th", "l", "m", "x"]

# relation -> (kind of its subject, kind of its value); entity kinds are the keys of _TEMPLATES
RELATIONS: dict[str, tuple[str, str]] = {
    "occupation": ("person", "occupation"), "birthplace": ("person", "city"),
    "birth_year": ("person", "year"), "employer": ("person", "organisation"),
    "org_kind": ("organisation", "org_kind"), "headquarters": ("organisation", "city"),
    "founded": ("organisation", "year"), "founder": ("organisation", "person"),
    "province": ("city", "province"), "river": ("city", "river"), "city_founded": ("city", "year"),
    "form": ("work", "form"), "creator": ("work", "person"), "year": ("work", "year"),
    "publisher": ("work", "organisation"),
}
# Creators make works of one form, which one kind of organisation issues.
_FORM_OF = {"novelist": "novel", "poet": "poetry collection", "historian": "history", "composer": "album",
            "singer": "album"}
_OCCUPATIONS = ["engineer", "chemist", "architect", "surgeon", "botanist", "painter", *_FORM_OF]
_ORG_SUFFIXES = {"Labs": "research laboratory", "Works": "manufacturing company", "Guild": "trade guild",
                 "Institute": "institute", "Foundry": "foundry", "Press": "publishing house", "Records": "record label"}
_ISSUER = {"album": "record label"}  # every other form: a publishing house
_LAST_YEAR = 2024
_TITLE_NOUNS = ["Lantern", "Harbour", "Orchard", "Winter", "Bridge", "Mirror", "Tide", "Garden", "Crown", "Island"]

# A few phrasings per kind, each stating every fact of the entity (the verbs follow the work's form).
_TEMPLATES = {
    "person": [
        "{name} is {a_occupation} who was born in {birthplace} in {birth_year}. {Pronoun} works for {employer}.",
        "Born in {birthplace} in {birth_year}, {name} became {a_occupation}. {Pronoun} is on the staff of {employer}.",
        "{name} works for {employer}. {Pronoun} is {a_occupation}, born in {birth_year} in {birthplace}.",
    ],
    "organisation": [
        "{name} is {a_org_kind} headquartered in {headquarters}. It was founded in {founded} by {founder}.",
        "{founder} founded {name} in {founded}. The {org_kind} has its headquarters in {headquarters}.",
        "Founded by {founder} in {founded}, {name} is {a_org_kind} based in {headquarters}.",
    ],
    "city": [
        "{name} City lies on the {river} river in the province of {province}. It was founded in {city_founded}.",
        "Founded in {city_founded}, {name} City stands on the {river} in the province of {province}.",
        "The city of {name} was founded in {city_founded} on the banks of the {river}, in {province} province.",
    ],
    "work": [
        "{name} is {a_form} by {creator}. {publisher} {issued} it in {year}.",
        "{creator} {made} {name}, {a_form} that {publisher} {issued} in {year}.",
        "{name}, {a_form} by {creator}, came out in {year}. Its {issuer} is {publisher}.",
    ],
}


@dataclass(frozen=True)
class World:
    """kinds: entity name -> its kind; passages: entity name -> the one passage describing it;
    facts: entity name -> relation -> value, every value stated in that passage;
    values: relation -> every value it takes in the world, for wrong answers of the same kind."""

    kinds: dict[str, str]
    facts: dict[str, dict[str, str]]
    passages: dict[str, str]
    values: dict[str, tuple[str, ...]]


class Namer:
    """Fresh name words for one world: none repeats within it, and all belong to ``owner`` of ``owners``."""

    def __init__(self, rng: random.Random, owner: int, owners: int):
        self.rng, self.owner, self.owners, self.used = rng, owner, owners, set()

    def word(self) -> str:
        while True:
            word = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                           for _ in range(2)).capitalize()
            if word not in self.used and zlib.crc32(word.encode()) % self.owners == self.owner:
                self.used.add(word)
                return word


def build_world(rng: random.Random, n_entities: int, namer: Namer) -> World:
    """About 40% people, 30% works, 15% organisations and 15% cities."""
    if n_entities < 60:  # fewer leave too few people to found the organisations and create the works
        raise ValueError(f"a world needs at least 60 entities; asked for {n_entities}")
    n_cities = n_orgs = n_entities * 3 // 20
    n_works = n_entities * 3 // 10
    cities = _cities(rng, namer, n_cities)
    unemployed = _people(rng, namer, n_entities - n_cities - n_orgs - n_works, list(cities))
    orgs = _organisations(rng, namer, n_orgs, list(cities), unemployed)
    people = _employ(rng, unemployed, orgs)
    works = _works(rng, namer, n_works, people, orgs)
    facts = {**people, **orgs, **cities, **works}
    kinds = {name: kind for kind, group in (("person", people), ("organisation", orgs), ("city", cities),
                                            ("work", works)) for name in group}
    passages = {name: _describe(rng, name, kinds[name], facts[name]) for name in facts}
    values = {relation: tuple(sorted({attributes[relation] for attributes in facts.values() if relation in attributes}))
              for relation in RELATIONS}
    return World(kinds, facts, passages, values)


def _cities(rng: random.Random, namer: Namer, n: int) -> dict[str, dict[str, str]]:
    # Several cities per province and per river, so a wrong province or river is a real one.
    provinces = [namer.word() for _ in range(max(3, n // 5))]
    rivers = [namer.word() for _ in range(max(3, n // 4))]
    return {namer.word(): {"province": rng.choice(provinces), "river": rng.choice(rivers),
                           "city_founded": str(rng.randint(1050, 1800))} for _ in range(n)}


def _people(rng: random.Random, namer: Namer, n: int, cities: list[str]) -> dict[str, dict[str, str]]:
    return {f"{namer.word()} {namer.word()}": {"occupation": rng.choice(_OCCUPATIONS), "birthplace": rng.choice(cities),
                                               "birth_year": str(rng.randint(1890, 1990))} for _ in range(n)}


def _organisations(rng: random.Random, namer: Namer, n: int, cities: list[str],
                   people: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    # Publishers of both kinds exist whatever the draw, so every work finds one.
    suffixes = ["Press", "Records"] + [rng.choice(list(_ORG_SUFFIXES)) for _ in range(n - 2)]
    founders = rng.sample(list(people), n)
    return {f"{namer.word()} {suffix}": {
        "org_kind": _ORG_SUFFIXES[suffix], "headquarters": rng.choice(cities),
        "founded": str(_later(rng, int(people[founder]["birth_year"]), 25, 55)), "founder": founder,
    } for suffix, founder in zip(suffixes, founders)}


def _employ(rng: random.Random, people: dict[str, dict[str, str]],
            orgs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Each person works for an organisation founded before they turned 50, where one exists."""
    employed = {}
    for name, attributes in people.items():
        open_then = [org for org, facts in orgs.items() if int(facts["founded"]) <= int(attributes["birth_year"]) + 50]
        employed[name] = dict(attributes, employer=rng.choice(open_then or list(orgs)))
    return employed


def _works(rng: random.Random, namer: Namer, n: int, people: dict[str, dict[str, str]],
           orgs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    creators = [name for name, person in people.items() if person["occupation"] in _FORM_OF]
    issuers_of = {kind: [name for name, org in orgs.items() if org["org_kind"] == kind]
                  for kind in ("publishing house", "record label")}
    works = {}
    for _ in range(n):
        creator = rng.choice(creators)
        form = _FORM_OF[people[creator]["occupation"]]
        year = _later(rng, int(people[creator]["birth_year"]), 20, 60)
        issuers = issuers_of[_ISSUER.get(form, "publishing house")]
        already = [name for name in issuers if int(orgs[name]["founded"]) <= year]
        noun = rng.choice(_TITLE_NOUNS)
        title = f"The {noun} of {namer.word()}" if rng.random() < 0.5 else f"{namer.word()} {noun}"
        works[title] = {"form": form, "creator": creator, "year": str(year),
                        "publisher": rng.choice(already or issuers)}
    return works


def _later(rng: random.Random, year: int, least: int, most: int) -> int:
    """A year ``least`` to ``most`` years after ``year`` and, where that allows, not after _LAST_YEAR."""
    return rng.randint(year + least, max(year + least, min(year + most, _LAST_YEAR)))


def _describe(rng: random.Random, name: str, kind: str, attributes: dict[str, str]) -> str:
    """The entity's passage: one of its kind's phrasings, filled with all of its facts."""
    album = attributes.get("form") == "album"
    fields = dict(attributes, name=name, Pronoun=rng.choice(["She", "He"]),
                  made="recorded" if album else "wrote", issued="released" if album else "published",
                  issuer="label" if album else "publisher")
    for relation in ("occupation", "org_kind", "form"):
        if relation in attributes:
            fields[f"a_{relation}"] = ("an " if attributes[relation][0] in "aeiou" else "a ") + attributes[relation]
    return rng.choice(_TEMPLATES[kind]).format(**fields)
