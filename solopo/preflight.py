"""What is checked before Hydra starts, and how solopo stops on bad input.

Hydra writes the command line to the run directory's ``.hydra/`` (and wandb records it) before the task function
runs, so a secret given as an override, or a run directory that cannot be written, must be refused earlier: the
console scripts call ``preflight`` first. Every bad setting or input file ends the same way: one line on stderr,
``error: ...``, exit status 2, no traceback (``stop``). This module imports nothing heavy: it runs before --help.
An option that no config group holds (algo=dpx) is refused here too, in one line, where Hydra's own message spans a
dozen lines. These checks read the command line's text; a bad value (optim.lr=-1) in the run or in any job of a sweep
is found in each job's composed config (solopo.job_checks.values_checked), and solopo.hydra_errors turns Hydra's own
failures (its refusals of the command line, a .hydra/ file it cannot write) into that one line.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterator, NoReturn, Optional, Sequence

from omegaconf import OmegaConf

CONF = Path(__file__).parent / "conf"  # the package's config groups (Hydra's primary config directory)
# Keys such as api_key, WANDB_API_KEY, hf_token, token, secret; not "tokenizer" or "n_tokens".
SECRET_KEY = re.compile(r"(^|_)(api_?key|token|secret|password)$", re.IGNORECASE)


def refuse_secrets(overrides: Sequence[str]) -> None:
    """Stops (exit 2) on a command-line override that sets a secret-looking key (SECRET_KEY, e.g.
    +model.extra.token=...). Called before Hydra starts: Hydra records every override in the run's .hydra/ folder
    and wandb the command line, in plain text, before any of solopo's code could redact them."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            stop(f"{key}: secrets are not accepted on the command line (Hydra writes every override to the run "
                   "directory's .hydra/); set them in environment variables instead (WANDB_API_KEY, HF_TOKEN, ...)")


def refuse_unwritable(overrides: Sequence[str], cwd: Path = Path(".")) -> None:
    """Stops (exit 2) when the run or sweep directory (hydra.run.dir / hydra.sweep.dir, else Hydra's default under
    ``cwd``) cannot be written: the first existing folder on its path gets a probe file. Checked before Hydra writes
    .hydra/ there and before any model loads."""
    given = {k: v for k, _, v in (o.partition("=") for o in overrides) if k in ("hydra.run.dir", "hydra.sweep.dir")}
    for key, folder in given.items() or [("hydra.run.dir", str(Path(cwd) / "outputs"))]:
        existing = Path(folder).absolute()
        while not existing.exists():
            existing = existing.parent
        try:
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".solopo-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            stop(f"{key}={folder}: cannot write to {existing} ({err.strerror or err})")


def config_dirs(argv: Sequence[str]) -> Optional[list[Path]]:
    """The folders Hydra finds config groups in: the package's and each ``--config-dir``/``-cd``; None where the
    command line changes the search in other ways (--config-path, hydra.searchpath=...), which Hydra alone resolves."""
    dirs, args = [CONF], list(argv)
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            dirs.append(Path(value or (args[i + 1] if i + 1 < len(args) else ".")))
        elif flag in ("--config-path", "-cp") or flag.lstrip("+~").startswith("hydra.searchpath"):
            return None
    return dirs


def chosen_options(value) -> Iterator[str]:
    """The options an override's value picks: one (algo=dpo), a list (algo=[dpo,simpo]) or a sweep's choices
    (algo=dpo,simpo or choice(dpo,simpo)); none for null, a glob or a range, which Hydra checks itself."""
    from hydra.core.override_parser.types import ChoiceSweep

    if isinstance(value, ChoiceSweep):
        value = value.list
    for option in value if isinstance(value, list) else [value]:
        if isinstance(option, (str, int, float)) and not isinstance(option, bool):
            yield str(option)


def refuse_unknown_options(argv: Sequence[str]) -> None:
    """Stops (exit 2) on an override that picks an option its config group does not hold (algo=dpx, model=nosuch),
    in one line naming the group and its options. Hydra's own groups (hydra/...), which its plugins extend, and
    overrides that do not parse are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    dirs, parser = config_dirs(argv), OverridesParser.create()
    for arg in [a for a in argv if "=" in a and not a.startswith("-")] if dirs else []:
        try:
            override = parser.parse_override(arg)
        except HydraException:
            continue
        group = override.key_or_group
        folders = [d / group for d in dirs if (d / group).is_dir()]
        if override.is_delete() or not folders or group == "hydra" or group.startswith("hydra/"):
            continue
        options = group_options(folders)
        for option in chosen_options(override.value()):
            if option not in options:
                close = option_meant(option, options)
                stop(f"{group}={option}: the config group {group} has no such option; "
                     + (f"did you mean {close}? " if close else "") + f"choose one of {', '.join(options)}")


def option_meant(option: str, options: Sequence[str]) -> Optional[str]:
    """The option of ``options`` that ``option`` most likely means: the same in another case (DPO: dpo), else the
    closest spelling (simpp: simpo), else None."""
    import difflib

    lower = {name.lower(): name for name in options}
    close = difflib.get_close_matches(option.lower(), list(lower), n=1)
    return lower[close[0]] if close else None


PARTS = "common"  # a group's folder of blocks its options compose (conf/data/common), not options of their own


def group_names(conf: Path = CONF) -> list[str]:
    """The config groups of a config folder (algo, experiment, hparams_search, ...), Hydra's own left out: the names a
    mistyped key may have meant (expriment=... is experiment=...)."""
    return sorted(folder.name for folder in conf.iterdir()
                  if folder.is_dir() and not folder.name.startswith(("_", "hydra")))


def group_options(folders: Sequence[Path]) -> list[str]:
    """A config group's options as a command line picks them (dpo; decisive/a for a file in a subfolder), from the
    group's folder in each config directory; the blocks under a PARTS folder are not options."""
    found = [f.relative_to(folder) for folder in folders for f in folder.rglob("*.yaml")]
    return sorted({f.with_suffix("").as_posix() for f in found if PARTS not in f.parts[:-1]})


def config_groups() -> str:
    """The config groups and their options, one line a group (``algo: cdpo, dpo, ...``), for --help, from the config
    search path Hydra has loaded (the package's, --config-dir, --config-path; as in Hydra's own listing, not a
    hydra.searchpath override, which Hydra applies only as it composes): options in subfolders
    listed under their group as they are typed (experiment: ..., decisive/a), Hydra's own groups (hydra/...) and PARTS
    folders left out."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()

    def options(group: str, below: str = "") -> list[str]:
        folder = f"{group}/{below}".rstrip("/")
        found = [below + option for option in loader.get_group_options(folder)]
        for sub in loader.list_groups(folder):
            found += options(group, f"{below}{sub}/") if sub != PARTS else []
        return found

    lines = [f"{group}: {', '.join(sorted(options(group)))}" for group in sorted(loader.list_groups(""))
             if group != "hydra"]
    return "\n".join(line for line in lines if not line.endswith(": "))


# solopo's options that need a Hydra plugin: the plugin's module and the extra of setup.cfg that installs it
# option: (the plugin's module, the package that brings it: what setup.cfg's extra of that name installs, named
# itself so that the hint works for an install from a wheel too, where no 'solopo[extra]' can be found on PyPI)
PLUGIN_OPTIONS = {"hparams_search=optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
                  "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")}


def safe_dirname(name: str, limit: int = 200) -> str:
    """``name`` as one folder name: characters other than A-Z a-z 0-9 . _ = , - become "_", and ".." becomes "_",
    so an override such as data.path=x/../../d never leads out of the sweep directory. Names over ``limit``
    characters are cut and end in a digest of the whole, so they stay distinct and within file-system limits."""
    safe = re.sub(r"[^A-Za-z0-9._=,-]", "_", name).replace("..", "_")
    if len(safe) > limit:
        safe = safe[:limit - 9] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


def program_name(called: Optional[str] = None) -> str:
    """The name a command was called by (``called``, default sys.argv[0]), for its --help and usage lines: a console
    script's (solopo-train), or ``python -m solopo.run`` where Python ran one of the package's modules."""
    path = Path(sys.argv[0] if called is None else called)
    if path.suffix != ".py":
        return path.name
    try:
        module = path.resolve().with_suffix("").relative_to(CONF.parents[1].resolve())
    except ValueError:  # a script outside the package
        return path.name
    return "python -m " + ".".join(part for part in module.parts if part != "__main__")


# conf/config.yaml names each job of a sweep with it: ${hydra.job.num}_${safe_dirname:${hydra.job.override_dirname}}
OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)
# conf/config.yaml and conf/build.yaml: hydra.help.app_name, the command's name in its --help
OmegaConf.register_new_resolver("program_name", lambda: program_name(), replace=True)
# conf/config.yaml: hydra.help.template, the groups --help lists (config_groups)
OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)


def stop(message: str) -> NoReturn:
    """Ends the process on a bad setting or input file: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def refuse_missing_plugins(argv: Sequence[str]) -> None:
    """Stops (exit 2) on an option of solopo's that needs a Hydra plugin which is not installed, in one line naming
    the package that brings it (Hydra: "Could not find 'hydra/sweeper/optuna'" and the search path, in a dozen)."""
    import importlib.util

    def installed(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # no Hydra plugin at all: no hydra_plugins package
            return False

    for arg in argv:
        module, package = PLUGIN_OPTIONS.get(arg.lstrip("+"), (None, None))
        if module is not None and not installed(module):
            stop(f"{arg.lstrip('+')}: Hydra's {module.split('.')[-1]} plugin is not installed; pip install {package}")


def refuse_two_modes(argv: Sequence[str]) -> None:
    """Stops (exit 2) on a command line that asks Hydra for two of a run, a sweep, the config, its info and shell
    completion (``-m ... --cfg job``), which Hydra refuses with a dozen-line traceback; --help answers first. Read
    with Hydra's own parser, as job_configs reads it."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help:
        return
    modes = [flag for flag, given in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                      ("--info", args.info), ("--shell-completion", args.shell_completion)) if given]
    if len(modes) > 1:
        stop(f"{' and '.join(modes)}: Hydra does one of --run, --multirun, --cfg, --info and --shell-completion at "
             "a time (to see the config of one job of a sweep, give its values without -m, with --cfg job)")


def refuse_unreadable_overrides(argv: Sequence[str]) -> None:
    """Stops (exit 2) on an override that Hydra's grammar cannot read, in one line naming it and what to do: a file
    name with parentheses or a non-ASCII letter (data.path=x(1).jsonl, data.path=daten/ü.jsonl), an unclosed bracket.
    Hydra answered in its parser's words ("mismatched input '.' expecting <EOF>") on three lines, exit status 1."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in get_args_parser().parse_known_args(list(argv))[0].overrides:
        try:
            parser.parse_override(override)
        except HydraException as err:
            key, _, value = override.partition("=")
            fix = ("close its brackets, and quote an item holding" if value[:1] in "[{"
                   else f"write \"{key}='{value}'\" (quoted for the shell too) for a value holding")
            stop(f"{override}: Hydra's override grammar cannot read it ({err}); {fix} parentheses, '=', non-ASCII "
                 "letters or other characters the grammar reserves")


def quiet_when_piped(argv: Sequence[str]) -> None:
    """A command line that only prints (--help, --hydra-help, --cfg, --info, --shell-completion) ends as other
    command-line tools do where what reads it stops early (`solopo-train --help | head -3`), by SIGPIPE's default
    action, not in a BrokenPipeError traceback. A run keeps Python's handling: a closed stdout does not kill
    training."""
    import signal

    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    if hasattr(signal, "SIGPIPE") and any((args.help, args.hydra_help, args.cfg, args.info, args.shell_completion)):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def preflight(argv: Sequence[str], run_dir: bool = True) -> None:
    """The checks a command line gets before Hydra writes anything (one thing for Hydra to do, secrets, the options of
    the config groups and the plugins they need, and, where Hydra makes one (``run_dir``), a writable run directory,
    whose .hydra/ files (and a sweep's) are then written whole, or stop the run in one line if they cannot be)."""
    from solopo.hydra_errors import hydra_files_whole  # it imports PARTS and config_dirs from here

    quiet_when_piped(argv)
    refuse_two_modes(argv)
    refuse_unreadable_overrides(argv)
    refuse_secrets(argv)
    refuse_unknown_options(argv)
    refuse_missing_plugins(argv)
    if run_dir:
        refuse_unwritable(argv)
        hydra_files_whole()
