"""Hydra's own failures, translated into solopo's one-line errors.

Hydra reports a command line it cannot compose, or a .hydra/ file it cannot write, in its own words: a dozen lines or a
traceback, exit status 1. This module owns what solopo makes of them instead, for solopo.preflight to stop with (one
line, exit 2): a group's folder chosen as an option (``folder_refusal``), a ~KEY Hydra cannot delete
(``deletion_refusal``), a key the config lacks set without its + (``added_keys``), and a failed write of .hydra/
(``stop_on_failed_hydra_writes``, which wraps Hydra's private ``hydra.core.utils._save_config``). Like solopo.preflight
it imports nothing heavy: it runs before --help.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from solopo.cache import stop_on_failed_writes, writing
from solopo.preflight import PARTS, config_dirs  # solopo.preflight imports this module where it calls it


def folder_refusal(error: Exception, argv: Sequence[str]) -> Optional[str]:
    """The one line for Hydra's refusal of a group's folder chosen as if it were a group (experiment/decisive=a,
    a folder of options under its group), or None for any other error, which Hydra reports in its own words."""
    found = re.search(r"Could not override '([^'/]+)/([^']+)'\. No match in the defaults list", str(error))
    if found is None:
        return None
    parent, below = found.groups()
    given = next((a.lstrip("+") for a in argv if a.lstrip("+").startswith(f"{parent}/{below}=")), f"{parent}/{below}")
    if below.split("/")[-1] == PARTS:
        return f"{given}: conf/{parent}/{below} holds blocks the {parent} options compose, not options"
    return f"{given}: {parent}/{below} is a folder of the config group {parent}; choose {parent}={below}/OPTION"


def deletion_refusal(error: Exception, argv: Sequence[str], overrides: Sequence[str], hydra,
                     name: str) -> Optional[str]:
    """The one line for Hydra's refusal of ~KEY where KEY holds no value ("Could not delete from config. 'KEY' does not
    exist", exit 1): a key whose value is null (~eval.every_n_steps), which Hydra's delete takes for none, or a key
    the config lacks; or None for any other error. Which of the two: the config composed without that override."""
    found = re.search(r"Could not delete from config\. '([^']+)' does not exist", str(error))
    if found is None or hydra is None:
        return None
    key = found.group(1)
    given = next((o for o in overrides if o.partition("=")[0] == f"~{key}"), f"~{key}")
    try:
        _, rest = added_keys(hydra, name, [o for o in overrides if o != given], config_dirs(argv))
    except Exception:  # noqa: BLE001 - another of its overrides is refused too: Hydra's words, as before
        return None
    if lacks(rest, key):
        return f"{given}: the config has no such key"
    return f"{given}: {key} is null already; Hydra deletes only a key that holds a value"


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


def stop_on_failed_hydra_writes() -> None:
    """Hydra writes the run folder's .hydra/ (config.yaml, hydra.yaml, overrides.yaml) before the task function runs
    and reports any error there itself, with a traceback and status 1: only a SystemExit passes it. Its writer is
    wrapped so that a failed write (a full disk) ends the process as every other does (solopo.cache's
    stop_on_failed_writes), in one line naming the file, status 2; any other error is left to Hydra. Once a process."""
    import hydra.core.utils as hydra_utils

    save = getattr(hydra_utils, "_save_config", None)  # run_job calls it by this name, for each of the three files
    if save is None or getattr(save, "stops_on_failed_writes", False):  # another Hydra's layout, or wrapped already
        return

    def save_config(cfg, filename: str, output_dir: Path) -> None:
        with stop_on_failed_writes(), writing(Path(output_dir) / filename):
            save(cfg, filename, output_dir)

    save_config.stops_on_failed_writes = True
    hydra_utils._save_config = save_config
