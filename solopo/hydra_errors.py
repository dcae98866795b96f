"""Hydra's own failures, translated into solopo's one-line errors.

Hydra reports a command line it cannot compose, or a .hydra/ file it cannot write, in its own words: a dozen lines or a
traceback, exit status 1. This module owns what solopo makes of them instead, for solopo.preflight to stop with (one
line, exit 2): a group's folder chosen as an option (``folder_refusal``), a ~KEY or ~KEY=VALUE Hydra cannot delete
(``deletion_refusal``), a key the config lacks set without its + (``added_keys``), and a failed write of .hydra/,
a sweep's multirun.yaml or the Optuna sweeper's results (``hydra_files_whole``, which writes them whole). Like
solopo.preflight it imports nothing heavy: it runs before --help.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from solopo.cache import atomic_file, stop_on_failed_writes
from solopo.preflight import PARTS, config_dirs  # solopo.preflight imports this module where it calls it


def folder_refusal(error: Exception, argv: Sequence[str]) -> Optional[str]:
    """The one line for Hydra's refusal of a group's folder chosen as if it were a group (experiment/decisive=a,
    a folder of options under its group), or None for any other error, which Hydra reports in its own words."""
    found = re.search(r"Could not override '([^'/]+)/([^']+)'\. No match in the defaults list", str(error))
    if found is None:
        return None
    parent, below = found.groups()
    given = next((a.lstrip("+") for a in argv if a.lstrip("+").startswith(f"{parent}/{below}=")), f"{parent}/{below}")
    if "@" in below:  # GROUP@PACKAGE=OPTION that the defaults list lacks: a block to add, with a +
        return f"{given}: the defaults list has no {parent}/{below} entry to override; to add the block, write +{given}"
    if below.split("/")[-1] == PARTS:
        return f"{given}: conf/{parent}/{below} holds blocks the {parent} options compose, not options"
    return f"{given}: {parent}/{below} is a folder of the config group {parent}; choose {parent}={below}/OPTION"


# Hydra's refusals of ~KEY (or ~KEY=VALUE, ~GROUP=OPTION): the pattern of its message, and the key or group it names
DELETIONS = {"absent": r"Could not delete from config\. '([^']+)' does not exist",
             "another value": r"Could not delete from config\. The value of '([^']+)' is ",
             "another option": r"Could not delete '([^'=]+)=[^']*'\. No match in the defaults list",
             "unresolved": r"Error merging override ~([^=\s]+)"}


def deletion_refusal(error: Exception, argv: Sequence[str], overrides: Sequence[str], hydra,
                     name: str) -> Optional[str]:
    """The one line for Hydra's refusal of a deletion (its words, exit 1), or None for any other error: ~KEY where KEY
    holds no value ("'KEY' does not exist": a null key such as ~eval.every_n_steps, or a key the config lacks),
    ~KEY=VALUE where KEY holds another value, ~GROUP=OPTION where another option is chosen, and ~KEY whose value Hydra
    cannot resolve as it deletes it (~logger.save_dir: ${hydra:runtime.output_dir}, known only once the run starts).
    Which, and the value held: the config composed without that override."""
    from omegaconf.errors import InterpolationResolutionError

    found = next(((kind, match.group(1)) for kind, pattern in DELETIONS.items()
                  if (match := re.search(pattern, str(error)))), None)
    if found is None or hydra is None or (found[0] == "unresolved"
                                          and not isinstance(error.__cause__, InterpolationResolutionError)):
        return None
    kind, key = found
    given = next((o for o in overrides if o.partition("=")[0] == f"~{key}"), f"~{key}")
    try:
        _, rest = added_keys(hydra, name, [o for o in overrides if o != given], config_dirs(argv))
    except Exception:  # noqa: BLE001 - another of its overrides is refused too: Hydra's words, as before
        return None
    value = given.partition("=")[2]
    if kind == "another value":
        return f"{given}: {key} is {shown(OmegaConf.select(rest, key))}, not {value}; ~KEY=VALUE deletes KEY only " \
               "where it holds VALUE, ~KEY whatever it holds"
    if kind == "another option":
        if (chosen := rest.hydra.runtime.choices.get(key)) is None:
            return f"{given}: no {key} option is chosen, so there is none to delete"
        return f"{given}: {key}={chosen} is chosen, not {key}={value}; ~GROUP=OPTION deletes GROUP only where OPTION " \
               "is chosen, ~GROUP whatever is chosen"
    if kind == "unresolved":
        why = unresolved(rest, key, error.__cause__)
        return f"{given}: Hydra resolves {key} to delete it, and {why}" if why else None
    if lacks(rest, key):
        return f"{given}: the config has no such key"
    return f"{given}: {key} is null already; Hydra deletes only a key that holds a value"


def unresolved(cfg, key: str, cause: BaseException) -> Optional[str]:
    """Why the value of ``key`` cannot be resolved, from OmegaConf's error (``cause``): a value of Hydra's, which it
    sets once the run starts (logger.save_dir: ${hydra:runtime.output_dir}), or another key's, missing or wrong; None
    where its value cannot be read as written (a key inside an interpolation), which Hydra reports in its own words."""
    parent, _, leaf = key.rpartition(".")
    try:
        held = OmegaConf.to_container(OmegaConf.select(cfg, parent) if parent else cfg, resolve=False)[leaf]
    except Exception:  # noqa: BLE001 - the parent is no mapping as written
        return None
    if "${hydra:" in str(held):
        return f"its value {held} is known only once the run starts; set {key} instead"
    said = str(cause).splitlines()[0]
    return f"its value {held} cannot be resolved ({said.partition('resolving interpolation: ')[2] or said})"


def shown(value) -> str:
    """A value of the config as a line of text shows it: a short one as it is, else what kind it is."""
    text = str(value)
    if OmegaConf.is_dict(value):
        return "a group of keys"
    return "a list" if OmegaConf.is_list(value) else "a longer value" if "\n" in text or len(text) > 60 else text


def added_keys(hydra, name: str, overrides: list[str], dirs: list[Path]):
    """(the overrides, the config they compose for a sweep): where Hydra refuses to set a key the config lacks
    (optim.lrr=1, foo=1; its error spans nine lines), that key added (+optim.lrr=1), so that the settings' checks
    name it in one line, with the key meant as a hint (values_checked)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    def compose(given):
        return hydra.compose_config(name, given, RunMode.MULTIRUN, validate_sweep_overrides=False)

    try:
        master = compose(overrides)
    except ConfigCompositionException:
        master = None
    parser = OverridesParser.create()
    settings = [o for o in overrides if is_setting(parser.parse_override(o), dirs)]
    bare = master if master is not None else compose([o for o in overrides if o not in settings])
    lacking = [o for o in settings if lacks(bare, o.partition("=")[0])]
    if not lacking:  # else a sweep's values (optim.lrr=1,2), which the sweep's config leaves out, or Hydra's refusal
        return overrides, master if master is not None else compose(overrides)
    overrides = ["+" + o if o in lacking else o for o in overrides]
    return overrides, compose(overrides)


def lacks(cfg, key: str) -> bool:
    """Whether the config has no ``key``; a mandatory key (???, data.path) it has."""
    if OmegaConf.select(cfg, key, default=KeyError, throw_on_missing=False) is not KeyError:
        return False
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    return not (OmegaConf.is_dict(node) and leaf in node.keys())


def is_setting(override, dirs: list[Path]) -> bool:
    """An override that sets a value (optim.lr=1): no +, ++ or ~, and neither a config group nor Hydra's own."""
    key = override.key_or_group
    return (override.type.name == "CHANGE" and override.package is None and not key.startswith("hydra")
            and not any((folder / key).is_dir() for folder in dirs))


def hydra_files_whole() -> None:
    """Hydra writes the run folder's .hydra/ (config.yaml, hydra.yaml, overrides.yaml) before the task function runs, a
    sweep's multirun.yaml before its first job, and the Optuna sweeper its optimization_results.yaml after its last;
    each with open() and write(), so a kill or a full disk could leave part of a file that a reader would trust (a
    study's record of a failed job reads .hydra/config.yaml: experiments/studies/failures.py), and Hydra reported a
    failed write itself, with a traceback and status 1 (only a SystemExit passes it). Their writers are replaced by
    write_whole: each file is whole or absent, and a failed write (a full disk) ends the process as every other does,
    in one line naming the file, status 2. Hydra's writer of .hydra/ is private (``hydra.core.utils._save_config``):
    another Hydra's layout is left as it is. Hydra runs each plugin's module again as it first looks for plugins, once
    a process (its Plugins, whose scan Hydra makes anyway): that comes first, or it would undo the sweepers' changes."""
    import hydra.core.utils as hydra_utils
    from hydra.core.plugins import Plugins

    if hasattr(hydra_utils, "_save_config"):  # run_job calls it by this name, for each of the three files
        hydra_utils._save_config = save_config
    Plugins.instance()
    if (basic := sys.modules.get(BASIC_SWEEPER)) is not None:
        basic.OmegaConf = SavesWhole  # its sweep() writes multirun.yaml with OmegaConf.save
    optuna = sys.modules.get(OPTUNA)  # the plugin's light module, if installed: optuna loads as its sweeper is made
    if optuna is not None and not getattr(optuna.OptunaSweeper.sweep, "saves_whole", False):
        optuna.OptunaSweeper.sweep = saving_whole(optuna.OptunaSweeper.sweep)


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper"
OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper"  # its OptunaSweeper holds the sweeper it delegates to


def write_whole(path: Path, cfg, resolve: bool = False) -> None:
    """``cfg`` as YAML in ``path``, written by solopo.cache's atomic writer; a failed write stops the process in one
    line naming ``path`` (status 2)."""
    with stop_on_failed_writes(), atomic_file(path, "wb") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=resolve).encode("utf-8"))


def save_config(cfg, filename: str, output_dir: Path) -> None:
    """hydra.core.utils._save_config, whose file is written whole."""
    write_whole(Path(output_dir) / filename, cfg)


class SavesWhole(OmegaConf):
    """OmegaConf as a Hydra sweeper's module sees it: its save() to a path is write_whole."""

    @staticmethod
    def save(config, f, resolve: bool = False) -> None:
        if not isinstance(f, (str, Path)):  # a file open already: the caller's to write
            return OmegaConf.save(config, f, resolve)
        write_whole(Path(f), config, resolve)


def saving_whole(sweep):
    """The Optuna sweeper's sweep(), its implementation's module (imported with optuna as the sweeper is made) seeing
    SavesWhole for OmegaConf."""
    def wrapped(self, arguments):
        sys.modules[type(self.sweeper).__module__].OmegaConf = SavesWhole
        return sweep(self, arguments)

    wrapped.saves_whole = True
    return wrapped
