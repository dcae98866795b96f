"""The composed Hydra config -> typed settings, checked before anything loads.

``build_settings`` builds every group's settings object (each dataclass checks its own fields and says which, see
solopo.settings.fields), then ``cross_group_rules`` checks the few rules that span groups. Every problem found is
reported at once, in one line naming the config keys, as a ``ConfigError``; the entry points print it and exit
with status 2 (``stop_on_config_errors``), seconds after the start instead of after minutes of loading a model.
This is the one module below the entry points that reads a DictConfig.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional, Sequence

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from solopo.core import algos
from solopo.core.objective import Method, SoLoRA
from solopo.eval.longctx import EvalSettings
from solopo.generation.sampling import SamplingSettings
from solopo.generation.vllm_engine import import_vllm
from solopo.models import kernels
from solopo.models.loading import ModelSpec, source_problems
from solopo.records import DataFileError
from solopo.scoring import FromFunction, as_scorer
from solopo.step import context_parallel
from solopo.step.context_parallel import ContextSplit
from solopo.settings.fields import ConfigError, Problems, SettingsError, flag, in_group, number
from solopo.settings.groups import (check_data, check_logger, check_run, check_trainer, lightning_arguments,
                                    missing_options, target, unknown_options)
from solopo.settings.keys import check_deletions, check_unread_keys
from solopo.settings.rules import FILE_OF_PAIRS, cross_group_rules
from solopo.preflight import CONF, PARTS, stop
from solopo.training.module import OptimSettings
from solopo.training.precision import resolve_precision

RUN_KEYS = ("seed", "reference", "packing", "logp_chunk_size", "val_every_n_steps", "save_model", "optimized_metric",
            "checkpoint", "faults", "cache")
EVAL_KEYS = ("enabled", "n_items", "vllm", "benchmark")  # the eval group's keys that EvalSettings does not hold
FROM_ELSEWHERE = ("seed", "template", "precision")  # EvalSettings fields other groups set


@dataclass(frozen=True)
class Settings:
    """Every group of a run, typed. ``eval`` is None with eval.enabled=false; ``sampling`` unless data.pairs=sampled."""

    algo: Any
    ra: SoLoRA
    method: Method
    model: ModelSpec
    optim: OptimSettings
    eval: Optional[EvalSettings]
    sampling: Optional[SamplingSettings]
    precision: str  # Lightning's name, trainer.precision=auto resolved on this machine
    benchmark: Any = None  # eval.benchmark (LongBench, RulerQA): the evaluation, instead of held-out questions
    context: Optional[ContextSplit] = None  # which sequences are split over processes; for training only


def plain(cfg: DictConfig, key: str) -> dict:
    node = cfg.get(key)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else {}


def built(group: str, make, node: dict, problems: Problems) -> Any:
    """``make(**node)``, or None with the dataclass's problems appended under ``group``'s keys."""
    wrong = unknown_options(group, make, node) + missing_options(group, make, node)
    if wrong:
        problems += wrong
        return None
    try:
        return make(**{k: v for k, v in node.items() if not k.startswith("_")})
    except SettingsError as err:
        problems += in_group(group, err.problems)
        return None


def algorithm_targets() -> list[str]:
    """The algorithms solopo ships (conf/algo/ names them), for messages."""
    return sorted(f"{algos.__name__}.{name}" for name, obj in vars(algos).items()
                  if isinstance(obj, type) and obj.__module__ == algos.__name__ and hasattr(obj, "needs_reference"))


def build_algo(node: dict, problems: Problems) -> Any:
    found, found_problems = target("algo", node, algorithm_targets())
    if found is not None and not all(hasattr(found, a) for a in ("needs_reference", "reward", "loss")):
        found_problems = [f"algo._target_={node['_target_']}: not an algorithm (one has reward, loss and "
                          f"needs_reference); choose one of {', '.join(algorithm_targets())}"]
    problems += found_problems
    return built("algo", found, node, problems) if found is not None and not found_problems else None


def build_targeted(group: str, node: dict, expected: type, problems: Problems) -> Any:
    """A group whose config names its settings class (``_target_``): ra, method."""
    found, found_problems = target(group, node, [f"{expected.__module__}.{expected.__qualname__}"])
    problems += found_problems
    return built(group, found, node, problems) if found is not None and not found_problems else None


SCORERS = [f"solopo.scoring.{name}" for name in ("SubEM", "ExactMatch", "TokenF1", "Regex", "FromFunction")]
BENCHMARKS = ["solopo.eval.longbench.LongBench", "solopo.eval.ruler.RulerQA"]


def with_scorer(key: str, node: dict, problems: Problems) -> Optional[dict]:
    """``node`` with its ``scorer`` config (``_target_``: a scorer class, or any function, see solopo.scoring) made
    into the scorer; without one, the settings' default (sub-EM). None when the scorer config is wrong."""
    spec = node.get("scorer")
    if spec is None:
        return {k: v for k, v in node.items() if k != "scorer"}
    found, found_problems = target(f"{key}.scorer", spec, SCORERS)
    if found is not None and not isinstance(found, type):  # a plain function: its one option is the threshold
        found_problems = unknown_options(f"{key}.scorer", FromFunction, {k: v for k, v in spec.items() if k != "fn"})
    problems += found_problems
    if found_problems:
        return None
    try:
        return {**node, "scorer": as_scorer(found, {k: v for k, v in spec.items() if not k.startswith("_")})}
    except SettingsError as err:
        problems += in_group(f"{key}.scorer", err.problems)
        return None


def build_benchmark(cfg: DictConfig, problems: Problems) -> Any:
    """eval.benchmark (conf/eval/longbench.yaml, ruler.yaml): the benchmark a run is evaluated on, or None."""
    value = cfg.eval.get("benchmark") if OmegaConf.is_config(cfg.get("eval")) else None
    if value is not None and not OmegaConf.is_config(value):  # eval.benchmark=x would turn the benchmark off
        problems += target("eval.benchmark", value, BENCHMARKS)[1]
        return None
    node = plain(cfg.eval, "benchmark") if value is not None else {}
    if not node:
        return None
    if OmegaConf.is_missing(cfg.eval.benchmark, "path"):
        option = choice(cfg, "eval")
        problems.append(f"eval={option} needs eval.benchmark.path=PATH (see conf/eval/{option}.yaml)")
        return None
    found, found_problems = target("eval.benchmark", node, BENCHMARKS)
    problems += found_problems
    return built("eval.benchmark", found, node, problems) if found is not None and not found_problems else None


def build_eval(cfg: DictConfig, precision: str, problems: Problems) -> Optional[EvalSettings]:
    """The evaluation settings, prompted with the training template (data.template) and computed under the
    trainer's precision; eval.engine=vllm without vllm installed is a problem here (when the evaluation runs),
    not after training."""
    node = plain(cfg, "eval")
    problems += flag("eval.enabled", node.get("enabled")) + number("eval.n_items", node.get("n_items"), 1, integer=True)
    fields = with_scorer("eval", {k: v for k, v in node.items() if k not in EVAL_KEYS}, problems)
    if fields is None:
        return None
    problems += unknown_options("eval", EvalSettings, {k: v for k, v in fields.items() if k not in FROM_ELSEWHERE},
                                EVAL_KEYS)  # eval.n_item=2 meant n_items
    fields.update(seed=cfg.seed, template=OmegaConf.select(cfg, "data.template", default="direct"), precision=precision)
    missing = missing_options("eval", EvalSettings, fields)
    problems += missing
    if missing:
        return None
    try:
        settings = EvalSettings(**fields)
    except SettingsError as err:
        problems += [f"data.{p}" if p.startswith("template=") else f"eval.{p}" for p in err.problems]
        return None
    except TypeError:  # an unknown option, reported above
        return None
    if node.get("enabled"):
        problems += engine_problems("eval.engine", settings.engine)
    return settings


def engine_problems(key: str, engine: str) -> Problems:
    """An engine=vllm where vllm does not import, in one line."""
    if engine != "vllm":
        return []
    try:
        import_vllm(key)
    except RuntimeError as err:
        return [str(err)]
    return []


# The command-line override that gives a data option without one the sampling block the QA data options compose
SAMPLING_BLOCK = f"+data/{PARTS}@data.sampling=sampling"


def no_sampling_block(option: str, given: Sequence[str] = ()) -> str:
    """data.pairs=sampled (or the command line's data.sampling keys, ``given``) where the data option has no
    data.sampling block, and how to give it one."""
    problem = (f"{', '.join(given) or 'data.pairs=sampled'}: data={option} has no data.sampling block to "
               f"{'set' if given else 'sample with'}; add the one data=qa, musique, hotpotqa and twowiki use, "
               f"{SAMPLING_BLOCK} (conf/data/common/sampling.yaml)" + ("" if given else ", or set data.pairs=gold"))
    if option == FILE_OF_PAIRS:  # its passages (schema A') are questions to sample for; ready-made pairs are not
        problem += " (sampling makes pairs for a passages file, schema A'; ready-made pairs are used as written)"
    return problem


def sampling_given_alone(cfg: DictConfig) -> list[str]:
    """The command line's data.sampling keys where they make the whole block (data=pairs data.sampling.k=2, which
    solopo.hydra_errors.added_keys adds): the data option has none of its own for them to change."""
    given = [o.lstrip("+") for o in command_line(cfg)[0] if o.lstrip("+").startswith("data.sampling.")]
    keys = {o.partition("=")[0].split(".")[2] for o in given}
    return given if given and set(cfg.data.sampling) <= keys else []


def build_sampling(cfg: DictConfig, precision: str, sampled: bool, problems: Problems) -> Optional[SamplingSettings]:
    """data.sampling, checked wherever the data group has it (a typo fails now, not the day the run switches to
    data.pairs=sampled); None where the pairs are not sampled."""
    if cfg.data.get("sampling") is None:
        if sampled:
            problems.append(no_sampling_block(choice(cfg, "data")))
        return None
    if given := sampling_given_alone(cfg):
        problems.append(no_sampling_block(choice(cfg, "data"), given))
        return None
    node = with_scorer("data.sampling", {**plain(cfg.data, "sampling"), "precision": precision}, problems)
    settings = None if node is None else built("data.sampling", SamplingSettings, node, problems)
    if settings is None or not sampled:
        return None
    problems += engine_problems("data.sampling.engine", settings.engine)
    return settings


def build_context(trainer: dict, problems: Problems) -> Optional[ContextSplit]:
    """trainer.context_parallel and trainer.context_parallel_min_tokens (solopo's own keys of the trainer group)."""
    try:
        return ContextSplit(size=trainer.get("context_parallel"), min_tokens=trainer.get("context_parallel_min_tokens"))
    except SettingsError as err:
        problems += in_group("trainer", err.problems)
        return None


def with_context_attention(model: Optional[ModelSpec], context: Optional[ContextSplit]) -> Optional[ModelSpec]:
    """The model spec a run loads: with context parallelism, SDPA (or solopo_varlen, the default, whose padded rows are
    SDPA's) becomes solopo_context, which runs split sequences over the gathered keys and values and every other
    sequence through SDPA (cross_group_rules refuses other kernels); packing=auto then picks padded rows
    (solopo.step.layout: solopo_context runs no other layout)."""
    if (model is None or context is None or context.size == 1
            or model.attn_implementation not in context_parallel.REPLACES):
        return model
    return replace(model, attn_implementation=context_parallel.NAME)


def trainer_arguments(cfg: DictConfig) -> DictConfig:
    """Lightning's Trainer arguments of the trainer group, resolved (its strategy reads solopo's keys by
    interpolation), without solopo's own keys."""
    arguments = lightning_arguments(OmegaConf.to_container(cfg.trainer, resolve=True))
    if arguments.get("max_epochs") is None:  # trainer.max_steps=100 alone trains 100 steps, not one epoch's
        arguments["max_epochs"] = -1 if arguments.get("max_steps", -1) > 0 else 1
    return OmegaConf.create(arguments)


def build_settings(cfg: DictConfig, training: bool = True) -> Settings:
    """Every settings object of the run, or one ConfigError naming every mistake; ``training=False`` builds only
    what evaluation reads (the model, the data source and prompt template, eval)."""
    if deleted := check_deletions(cfg, *command_line(cfg), training):
        raise ConfigError("; ".join(deleted))  # alone: the checks below would stop on what it deleted, or in a traceback
    option = choice(cfg, "data") or ""  # "": a data block of one's own config, no option (override data: null)
    if option.split("/")[0] == PARTS:  # conf/data/common: blocks the data configs compose (qa_file, sampling)
        raise ConfigError(f"data={option}: a block the data configs share (conf/data/{option}.yaml), not a data option")
    if OmegaConf.is_missing(cfg.data, "path"):  # first, with the keys nothing reads (data.pth=FILE meant data.path):
        misspelt = check_unread_keys(cfg, option)  # every key reading ${data.path} would fail to resolve
        raise ConfigError("; ".join([*misspelt, f"data={option} needs data.path=FILE (see conf/data/{option}.yaml)"]))
    problems: Problems = []
    precision = resolve_precision(str(cfg.trainer.get("precision", "auto")))
    model = built("model", ModelSpec, plain(cfg, "model"), problems)
    problems += kernels.liger_problems(torch.cuda.is_available()) if model is not None and model.liger is True else []
    problems += kernels.compile_problems(torch.cuda.is_available()) if model is not None and model.compile else []
    problems += check_data(plain(cfg, "data"), training)
    settings = dict(model=model, eval=build_eval(cfg, precision, problems), algo=None, ra=None, method=None, optim=None,
                    sampling=None, context=None, benchmark=build_benchmark(cfg, problems))
    if training:
        sampling = build_sampling(cfg, precision, cfg.data.get("pairs") == "sampled", problems)
        settings.update(
            algo=build_algo(plain(cfg, "algo"), problems),
            ra=build_targeted("ra", plain(cfg, "ra"), SoLoRA, problems),
            method=build_targeted("method", plain(cfg, "method"), Method, problems),
            optim=built("optim", OptimSettings, plain(cfg, "optim"), problems),
            sampling=sampling,
            context=build_context(plain(cfg, "trainer"), problems))
        problems += check_trainer(plain(cfg, "trainer"), torch.cuda.is_available())
        logger = cfg.get("logger")  # unresolved: its save_dir reads Hydra's run directory
        problems += check_logger(OmegaConf.to_container(logger) if OmegaConf.is_config(logger) else {})
        problems += check_run({key: plain(cfg, key) if OmegaConf.is_config(cfg.get(key)) else cfg.get(key)
                               for key in RUN_KEYS})
    problems += cross_group_rules(cfg, settings, choice(cfg, "data"), training, *command_line(cfg))
    if problems:
        raise ConfigError("; ".join(problems))
    if training and not cfg.eval.enabled:
        settings.update(eval=None, benchmark=None)
    settings["model"] = with_context_attention(settings["model"], settings["context"])
    return Settings(**settings, precision=precision)


def refuse_missing_model(model: ModelSpec) -> None:
    """A ConfigError where the weights or the tokenizer cannot be found (model.name=/nonexistent: no such folder; an
    unknown hub id), in one line, before anything loads: training, evaluation and the check of a command line before
    Hydra (solopo.job_checks.values_checked) all ask here."""
    if problems := source_problems(model):
        raise ConfigError("; ".join(problems))


def vllm_args(cfg: DictConfig) -> dict:
    """eval.vllm: further vllm.LLM arguments for eval.engine=vllm."""
    return OmegaConf.to_container(cfg.eval.vllm, resolve=True) if cfg.eval.get("vllm") else {}


def load_source(cfg: DictConfig):
    """The items of ``data.source``; a malformed data file stops the run with its own one-line message (file, line,
    field) instead of Hydra's instantiation error around it."""
    try:
        return instantiate(cfg.data.source)
    except InstantiationException as err:
        if isinstance(err.__cause__, DataFileError):
            raise ConfigError(str(err.__cause__)) from None
        raise


@contextlib.contextmanager
def stop_on_config_errors() -> Iterator[None]:
    """An entry point's body: a ConfigError ends the process with its one line on stderr and status 2."""
    try:
        yield
    except ConfigError as err:
        stop(str(err))


def command_line(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The overrides the command line gave and the config groups, as Hydra records them: in a composed config's hydra
    node (the checks before Hydra starts, tests), else in a Hydra app's HydraConfig; none for a config made
    otherwise."""
    node = cfg.hydra if "hydra" in cfg else HydraConfig.get() if HydraConfig.initialized() else None
    return ([], []) if node is None else (list(node.overrides.task), list(node.runtime.choices))


def set_in_own_config(cfg: DictConfig, key: str) -> Optional[str]:
    """The file of one's own config folder (--config-dir, hydra.searchpath: not the package's) whose chosen option sets
    ``key`` for the whole config (``# @package _global_``, as an experiment overlay is written), or None. The package's
    overlays (experiment=smoke, default_gpu, ...) set sizes for whatever data they compose with; one's own file that
    sets a key is a request for it."""
    node = cfg.hydra if "hydra" in cfg else HydraConfig.get() if HydraConfig.initialized() else None
    if node is None:
        return None
    folders = [Path(source.path) for source in node.runtime.config_sources
               if source.schema == "file" and Path(source.path).resolve() != CONF.resolve()]
    for group, option in node.runtime.choices.items():
        if option is None or group.startswith("hydra") or (CONF / group / f"{option}.yaml").is_file():
            continue  # the package's options come first: a file of one's own of that name is not read
        found = next((f for f in (folder / group / f"{option}.yaml" for folder in folders) if f.is_file()), None)
        if found is not None and "@package _global_" in found.read_text(encoding="utf-8"):
            if OmegaConf.select(OmegaConf.load(found), key, default=None,
                                throw_on_resolution_failure=False) is not None:
                return str(found)
    return None


def choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for a config group (data=musique -> musique), inside a Hydra app or a composed config."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices[group]
    return OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=group)
