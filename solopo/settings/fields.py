"""The vocabulary of settings checks, shared by every settings dataclass.

A check returns the problems it finds as ``field=value: what is allowed`` (the value as written on the command
line); a dataclass raises them together as one ``SettingsError`` from ``__post_init__``, and the config layer
(solopo.settings.build) puts the group in front, so the user reads the config key: ``ra.alpha=-1: ...``.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Iterable, Optional

Problems = list[str]


class ConfigError(Exception):
    """A mistake in the config, or in what it points at (a data file, the embedded model's source), as one line naming
    the keys, the setting or the file; the entry points stop on it with that line, status 2, before any model loads
    where they can (solopo.settings.build.stop_on_config_errors). Here, with no imports, so that any layer may raise
    one."""


class SettingsError(ValueError):
    """A settings object refused its fields; ``problems`` are ``field=value: reason``, each naming one field."""

    def __init__(self, problems: Problems):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def refuse(problems: Problems) -> None:
    """Raises the problems, if any, as one SettingsError (the end of a dataclass's ``__post_init__``)."""
    if problems:
        raise SettingsError(problems)


def shown(value: Any) -> str:
    """A value as it is written on the command line: strings bare, null, true/false, [a,b]."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(shown, value)) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def one_of(key: str, value: Any, allowed: Iterable) -> Problems:
    allowed = list(allowed)
    # Same type too: 1 == True, yet packing=1 is not packing=true.
    if any(type(value) is type(a) and value == a for a in allowed):
        return []
    return [f"{key}={shown(value)}: choose one of {', '.join(map(shown, allowed))}"]


def number(key: str, value: Any, low: Optional[float] = None, high: Optional[float] = None, *, integer: bool = False,
           above: bool = False, below: bool = False, optional: bool = False, note: str = "") -> Problems:
    """A finite number (an integer with ``integer``) >= low (> low with ``above``) and <= high (< high with
    ``below``); null too with ``optional``. inf and nan are refused: an infinite rate or weight trains nothing but
    NaNs."""
    if value is None and optional:
        return []
    kinds = (int,) if integer else (int, float)
    fits = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if (fits and (low is None or (value > low if above else value >= low))
            and (high is None or (value < high if below else value <= high))):
        return []
    wanted = "an integer" if integer else "a number"
    if low is not None and high is not None:
        wanted += f" in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"
    elif low is not None:
        wanted += f" {'>' if above else '>='} {low:g}"
    return [f"{key}={shown(value)}: must be {wanted}{' or null' if optional else ''}{note}"]


def flag(key: str, value: Any) -> Problems:
    return [] if isinstance(value, bool) else [f"{key}={shown(value)}: must be true or false"]


def in_group(group: str, problems: Problems) -> Problems:
    """The problems of one group's settings under their config keys (``alpha=-1`` -> ``ra.alpha=-1``)."""
    return [f"{group}.{problem}" for problem in problems]


IMPORTABLE = "it must be importable: run from its folder with python -m solopo.run (or solopo.evaluate), or set PYTHONPATH"


def locate(key: str, path: Any) -> tuple[Optional[Any], Problems]:
    """What a dotted path (mymetrics.half) names, or the problem: a module that cannot be imported says why (the
    console scripts, unlike python -m, do not look in the current folder), a name the module lacks says so."""
    module, _, name = str(path).rpartition(".")
    if not module:
        return None, [f"{key}={shown(path)}: not a dotted path (module.name)"]
    try:
        found = importlib.import_module(module)
    except ImportError as err:
        return None, [f"{key}={shown(path)}: cannot import module {module} ({err}); {IMPORTABLE}"]
    if not hasattr(found, name):
        return None, [f"{key}={shown(path)}: module {module} has no {name}"]
    return getattr(found, name), []
