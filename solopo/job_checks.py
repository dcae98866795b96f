"""Each job a command line starts, composed before Hydra runs it, and its settings checked.

Hydra makes the run directory (a sweep's, and each job's folder in turn) and writes .hydra/ before the task function
runs, and a sweep's jobs start one after another: a bad value (optim.lr=-1) in the run or in any job of a sweep, or a
model that cannot be found, would stop only as its job starts. The entry points' checks compose every job as Hydra
will (``job_configs``) and stop on the first one's problem in one line, status 2, before Hydra writes anything
(``values_checked``; solopo-build's ``configs_checked``), or, where Hydra only prints the config (--cfg job), once it
has printed it. The checks of the command line's text that need no composed config are solopo.preflight's; Hydra's
refusals of a command line it cannot compose, solopo.hydra_errors'. Hydra and the settings are imported inside the
functions: solopo.preflight's checks run before --help, and this module is imported with them.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from solopo.hydra_errors import added_keys, deletion_refusal, folder_refusal
from solopo.preflight import CONF, config_dirs, stop

BASIC = "hydra._internal.core_plugins.basic_{}.Basic{}"  # Hydra's own sweeper and launcher: the jobs run here, in turn


def app_hydra(argv: Sequence[str]):
    """Hydra's composer for the command line's config folders (the package's, then each --config-dir before it, as
    hydra.main orders them), or None where only Hydra can find them (config_dirs). The caller clears GlobalHydra."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    dirs = config_dirs(argv)
    if dirs is None:
        return None
    search_path = create_config_search_path(str(CONF))
    for folder in dirs[1:]:
        search_path.prepend("command-line", f"file://{Path(folder).absolute()}", SearchPathQuery(provider="schema"))
    return Hydra.create_main_hydra2(task_name="preflight", config_search_path=search_path)


def job_configs(argv: Sequence[str], config_name: str) -> list[tuple[list[str], object]]:
    """Each job the command line starts, as (its overrides, its composed config), composed as Hydra will compose it:
    one for a run, or for the config Hydra prints (--cfg job or all); for a sweep (-m, or hydra.mode=MULTIRUN) one per
    combination of its values (hydra.sweeper.params and the command line's, Hydra's basic sweeper's own expansion).
    None (empty) where the command line asks Hydra something else (--help, --cfg hydra, --info, completion), where only
    Hydra can tell (--config-path, another sweeper such as Optuna, whose trials are chosen as they run), where the jobs
    run elsewhere (a SLURM launcher: another machine's GPUs), or where Hydra would refuse the command line itself (it
    says why, as before)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    args, _ = get_args_parser().parse_known_args(list(argv))
    if (args.help or args.hydra_help or args.cfg == "hydra" or args.info or args.shell_completion
            or args.experimental_rerun):
        return []
    hydra, name = None, args.config_name or config_name
    try:
        hydra = app_hydra(argv)
        if hydra is None:
            return []
        overrides, master = added_keys(hydra, name, args.overrides, config_dirs(argv))
        if master.hydra.launcher._target_ != BASIC.format("launcher", "Launcher"):
            return []
        if args.cfg or (not args.multirun and master.hydra.mode != RunMode.MULTIRUN):  # --cfg: Hydra composes a run
            return [(overrides, hydra.compose_config(name, overrides, RunMode.RUN))]
        return sweep_jobs(hydra, master)
    except Exception as err:  # noqa: BLE001 - a command line Hydra cannot compose is Hydra's to report, in its words
        if (line := folder_refusal(err, argv) or deletion_refusal(err, argv, args.overrides, hydra, name)) is not None:
            stop(line)
        return []
    finally:
        GlobalHydra.instance().clear()


def sweep_jobs(hydra, master) -> list[tuple[list[str], object]]:
    """A sweep's jobs as Hydra's basic sweeper expands them (hydra.sweeper.params and the command line's values), each
    with its composed config; none under another sweeper (Optuna's trials are chosen as they run)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if master.hydra.sweeper._target_ != BASIC.format("sweeper", "Sweeper"):
        return []
    params = [f"{key}={value}" for key, value in (master.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(master.hydra.overrides.task))
    return [(job, hydra.config_loader.load_sweep_config(master, job))
            for job in BasicSweeper.split_arguments(parsed, None)[0]]


@contextlib.contextmanager
def values_checked(argv: Sequence[str], training: bool = True, config_name: str = "config") -> Iterator[None]:
    """Around Hydra's main: stops (exit 2) on the first job whose settings are wrong (build_settings' one line;
    configs_checked says when). The model's weights and tokenizer must be found too. Each job checks its settings
    again as it starts (an Optuna trial's values, or a SLURM job's, only there). ``training=False``: what an
    evaluation reads."""
    models = []

    def problem(cfg) -> Optional[str]:
        from solopo.settings.build import ConfigError, build_settings, refuse_missing_model  # torch: not for --help

        try:
            model = build_settings(cfg, training).model
            if model not in models:  # a sweep's jobs mostly share one
                refuse_missing_model(model)
                models.append(model)
        except ConfigError as err:
            return str(err)
        return None

    with configs_checked(argv, config_name, problem):
        yield


def for_evaluation(argv: Sequence[str], config_name: str = "config") -> list[str]:
    """``argv`` less the overrides only training reads (solopo.settings.keys.training_only), which solopo-eval refuses:
    for a launcher that gives a study's evaluation the overrides of all its jobs. Unchanged where it composes no one
    job (a sweep, --config-path)."""
    from solopo.settings.build import command_line  # torch: not for --help
    from solopo.settings.keys import training_only

    jobs = job_configs(argv, config_name)
    if len(jobs) != 1:
        return list(argv)
    unread = {override.lstrip("+") for override in training_only(jobs[0][1], *command_line(jobs[0][1]))}
    return [arg for arg in argv if arg.lstrip("+") not in unread]


@contextlib.contextmanager
def configs_checked(argv: Sequence[str], config_name: str,
                    problem: Callable[[object], Optional[str]]) -> Iterator[None]:
    """Around Hydra's main: stops (exit 2) on the first job of job_configs whose config ``problem`` finds wrong, with
    its one line, before Hydra makes a run or sweep directory: a bad value stops a sweep before its first job, not when
    the job that holds it starts. Where Hydra only prints the config (--cfg job or all), which runs no job and so no
    job's checks, they run once it is printed (it shows at once; they may import torch), with the same line and
    status; before, where Hydra cannot compose the config (a key it lacks)."""
    jobs = job_configs(argv, config_name)
    printed_first = bool(jobs) and shows_config(argv) and not lacking_keys(jobs, argv)
    if not printed_first and (line := first_problem(jobs, argv, problem)) is not None:
        stop(line)
    yield
    if printed_first and (line := first_problem(jobs, argv, problem)) is not None:
        sys.stdout.flush()  # the config before the line, through a pipe too
        stop(line)


def first_problem(jobs: list[tuple[list[str], object]], argv: Sequence[str],
                  problem: Callable[[object], Optional[str]]) -> Optional[str]:
    """The line of the first job's config that ``problem`` finds wrong, or None. A key the config lacks (optim.lrr=1,
    added by solopo.hydra_errors.added_keys) is named by the checks with a hint, or, where something takes any key,
    with the + that adds it."""
    for number, (overrides, cfg) in enumerate(jobs):
        if (found := problem(cfg)) is not None:
            return f"sweep job {number} ({' '.join(overrides)}): {found}" if len(jobs) > 1 else found
    added = lacking_keys(jobs, argv)  # a key that takes any keys: the checks found nothing wrong
    return f"{added[0][1:]}: the config has no such key; to add one, write {added[0]}" if added else None


def lacking_keys(jobs: list[tuple[list[str], object]], argv: Sequence[str]) -> list[str]:
    """The overrides of ``argv`` that set a key the config lacks, as solopo.hydra_errors.added_keys wrote them: with
    a +."""
    given = {o.partition("=")[0] for o in argv}
    return [o for o in (jobs[0][0] if jobs else ()) if o.startswith("+") and o.partition("=")[0][1:] in given]


def shows_config(argv: Sequence[str]) -> bool:
    """Whether the command line asks Hydra to print the job's config (--cfg job or all) instead of running it."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_known_args(list(argv))[0].cfg in ("job", "all")
