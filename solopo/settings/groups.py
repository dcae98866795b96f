"""Checks of the config groups that hold no settings dataclass of solopo's own: the data keys around the source,
Lightning's Trainer arguments, and the top-level keys of conf/config.yaml. Each returns its problems under their
config keys; the groups with a dataclass check themselves (solopo.settings.build builds them)."""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Iterable, Mapping, Optional

from solopo.cache import VERIFY
from solopo.data.collate import PACKINGS
from solopo.data.pairs import PAIR_RULES
from solopo.data.tokenize import OVERLONG_POLICIES, TRUNCATE_SIDES
from solopo.models.loading import SAVE_MODEL
from solopo.settings.fields import Problems, flag, locate, number, one_of, shown
from solopo.settings.other_names import suggestion
from solopo.training.loggers import WANDB_ENV_MODES, WANDB_MODES

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")  # Lightning's, and auto (solopo.run)
GPU_ONLY = "trainer.accelerator={} but no CUDA GPU is visible; use trainer=default (GPU when present) or trainer=cpu"


def unknown_options(key: str, target: Callable, node: dict, taken_too: Iterable[str] = ()) -> Problems:
    """Options of ``node`` that ``target`` does not take (Hydra's own keys, _target_ and the like, aside)."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    taken = [name for name in params if name != "self"] + list(taken_too)
    problems = []
    for option in [option for option in node if not option.startswith("_") and option not in taken]:
        close = suggestion(f"{key}.{option}", taken)
        hint = f"did you mean {close}?" if close else f"it takes {', '.join(taken)}" if len(taken) <= 8 else ""
        problems.append(f"{key}.{option}={shown(node[option])}: {target.__qualname__} takes no such option"
                        + (f"; {hint}" if hint else ""))
    return problems


def missing_options(key: str, target: Callable, node: dict) -> Problems:
    """Options ``target`` requires that ``node`` leaves out: a settings field's default is written once, in its
    config group, so a hand-written group file must give every key the shipped one gives."""
    params = inspect.signature(target).parameters.values()
    missing = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in node and p.name != "self"]
    return [f"{key}: missing {', '.join(missing)}; {target.__qualname__} needs them (see the shipped files in "
            "solopo/conf)"] if missing else []


def target(key: str, node: dict, catalogue: Iterable[str] = ()) -> tuple[Optional[Any], Problems]:
    """The class or function ``node._target_`` names, and what is wrong with it or with the options given to it."""
    if not isinstance(node, Mapping):  # eval.scorer=ExactMatch: a value where a block with a _target_ belongs
        meant = [name for name in catalogue if name.rsplit(".", 1)[-1].lower() == str(node).lower()]
        hint = f"; did you mean {key}._target_={meant[0]}?" if meant else ""
        listed = f" (one of {', '.join(catalogue)})" if catalogue and not meant else ""
        return None, [f"{key}={shown(node)}: expected a block with a _target_, not a value; set "
                      f"{key}._target_=CLASS{listed}{hint}"]
    found, problems = locate(f"{key}._target_", node.get("_target_"))
    if found is None:  # a module of one's own that cannot be imported says why; else the catalogue is the help
        own = "cannot import module" in problems[0] and not str(node.get("_target_")).startswith("solopo.")
        listed = f"; choose one of {', '.join(catalogue)}" if catalogue else ""
        return None, problems if own else [f"{key}._target_={shown(node.get('_target_'))}: no such class or "
                                           f"function{listed}"]
    return found, unknown_options(key, found, node)


def check_data(data: dict, training: bool = True) -> Problems:
    """The data keys beside the source's own (its loader checks those) and the sampling settings (SamplingSettings);
    long_len against the model is a cross-group rule."""
    source = data.get("source") or {}
    if not isinstance(source, Mapping):  # data.source=foo: nothing else of it to check
        return target("data.source", source)[1]
    problems = (target("data.source", source)[1]
                + number("data.source.n_val", source.get("n_val", 0), 0, integer=True)
                + number("data.source.n_train", source.get("n_train"), 1, integer=True, optional=True)
                + number("data.source.n_test", source.get("n_test", 0), 0, integer=True))
    if not training:  # evaluation reads the data source and the prompt template only (EvalSettings checks that)
        return problems
    problems += one_of("data.pairs", data.get("pairs"), PAIR_RULES)
    problems += one_of("data.overlong", data.get("overlong"), OVERLONG_POLICIES)
    problems += one_of("data.truncate", data.get("truncate"), TRUNCATE_SIDES)
    problems += number("data.batch_size", data.get("batch_size"), 1, integer=True)
    problems += number("data.num_workers", data.get("num_workers"), 0, integer=True)
    return problems + number("data.short_len", data.get("short_len"), 1, integer=True, optional=True)


# solopo's own keys of the trainer group, beside Lightning's Trainer arguments (solopo.step.context_parallel.ContextSplit)
CONTEXT_KEYS = ("context_parallel", "context_parallel_min_tokens")


def lightning_arguments(trainer: dict) -> dict:
    """The trainer group less solopo's own keys: what Lightning's Trainer takes."""
    return {key: value for key, value in trainer.items() if key not in CONTEXT_KEYS}


def check_trainer(trainer: dict, gpu_visible: bool) -> Problems:
    """Lightning's Trainer arguments that solopo relies on; a strategy is checked against the machine later."""
    _, problems = target("trainer", lightning_arguments(trainer))
    accelerator = trainer.get("accelerator")
    problems += [GPU_ONLY.format(accelerator)] if accelerator in ("gpu", "cuda") and not gpu_visible else []
    problems += one_of("trainer.precision", str(trainer.get("precision", "auto")), PRECISIONS)
    if trainer.get("max_steps", -1) != -1:
        problems += number("trainer.max_steps", trainer["max_steps"], 1, integer=True,
                           note=" (or -1: the epochs decide)")
    if trainer.get("max_epochs", -1) != -1:  # 0 epochs would end the run at once, having trained nothing
        problems += number("trainer.max_epochs", trainer["max_epochs"], 1, integer=True, optional=True,
                           note=" (or -1: the steps decide)")
    devices = trainer.get("devices", "auto")
    if not (devices == "auto" or devices == -1 or isinstance(devices, (str, list)) and devices
            or not number("", devices, 1, integer=True)):
        problems.append(f"trainer.devices={shown(devices)}: must be an integer >= 1, -1 (all), a list of ids or auto")
    # A negative clip value flips every gradient: the run climbs the loss.
    problems += number("trainer.gradient_clip_val", trainer.get("gradient_clip_val"), 0, optional=True)
    return problems + number("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1,
                             integer=True)


def check_run(top: dict) -> Problems:
    """The top-level keys of conf/config.yaml (the config writes each default; nothing here restates one)."""
    checkpoint, faults = top.get("checkpoint") or {}, top.get("faults") or {}
    problems = number("seed", top.get("seed"), 0, integer=True)
    problems += one_of("reference", top.get("reference"), ("cached", "live"))
    problems += one_of("packing", top.get("packing"), PACKINGS)
    problems += one_of("cache.verify", (top.get("cache") or {}).get("verify"), VERIFY)
    problems += number("logp_chunk_size", top.get("logp_chunk_size"), 1, integer=True)
    problems += number("val_every_n_steps", top.get("val_every_n_steps"), 1, integer=True, optional=True)
    problems += one_of("save_model", top.get("save_model"), SAVE_MODEL)
    problems += flag("checkpoint.keep", checkpoint.get("keep"))
    metric = top.get("optimized_metric")
    if metric is not None and not (isinstance(metric, str) and metric.startswith(("train/", "val/", "eval/"))):
        problems.append(f"optimized_metric={metric!r}: a metric key such as val/loss or eval/trained/avg_long, or null")
    problems += number("checkpoint.every_n_steps", checkpoint.get("every_n_steps"), 1, integer=True, optional=True)
    problems += number("checkpoint.every_n_minutes", checkpoint.get("every_n_minutes"), 0, above=True, optional=True)
    if checkpoint.get("every_n_steps") and checkpoint.get("every_n_minutes"):
        problems.append("set checkpoint.every_n_steps or checkpoint.every_n_minutes, not both")
    return problems + number("faults.max_consecutive_bad_steps", faults.get("max_consecutive_bad_steps"), 1,
                             integer=True)


def check_logger(logger: dict, environ: Mapping[str, str] = os.environ) -> Problems:
    """The logger group (logger=none has no class): the options its class takes (+logger.tags=[a,b] is one of
    each shipped logger's), wandb's logger.mode, and WANDB_MODE in the environment, which wandb reads and
    refuses only when the logger starts, after the model has loaded."""
    if "_target_" not in logger:
        return []
    problems = target("logger", logger)[1]
    if "wandb" in str(logger["_target_"]):
        problems += one_of("logger.mode", logger.get("mode"), WANDB_MODES)
        mode = environ.get("WANDB_MODE")
        if mode is not None and mode not in WANDB_ENV_MODES:
            problems.append(f"WANDB_MODE={mode!r} in the environment: wandb takes {', '.join(WANDB_ENV_MODES)}; "
                            "unset it to let logger.mode decide")
    return problems
