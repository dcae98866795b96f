"""Configuration checks that run before anything loads.

A mistake in the config stops the run at once with one line that names the key, the bad value and what is
allowed, instead of a stack trace from deep inside after minutes of loading a model and sampling pairs.
Each check is a pure function of plain values (the resolved config groups as dicts) that returns the
problems it finds; ``validate_config`` is the one entry point that reads a DictConfig.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Iterable, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from solopo.cache import VERIFY
from solopo.core import algos
from solopo.step import shared_prompt
from solopo.data.collate import PACKINGS, SHARED_PROMPT
from solopo.data.contexts import INSTRUCTIONS
from solopo.data.formats import DataFileError
from solopo.data.pairs import PAIR_RULES
from solopo.data.tokenize import OVERLONG_POLICIES
from solopo.core.losses.alignment import DISTANCES
from solopo.models.loading import INIT_DEVICES, ModelSpec
from solopo.core.objective import CHOSEN, LONG, REJECTED, SHORT, Method
from solopo.generation.vllm_engine import ENGINES

Problems = list[str]

# x_long holds the evidence (the built-in data's x_short runs to 55-150 tokens) and irrelevant text around it;
# below this there is no room for the irrelevant text, so the long context would teach nothing.
MIN_LONG_LEN = 128
TEMPLATE_TOKENS = 32  # what a chat template adds around the user message (SmolLM2's: 30 tokens)
GOLD_RESPONSE_TOKENS = 32  # gold answers and wrong answers are a few words
EVAL_ROOM = 64  # what solopo.eval.longctx.build_cases keeps free below model.max_length for template and answer
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")  # Lightning's, and auto (solopo.run)
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
# The hyperparameters of conf/algo/: beta scales (or divides, IPO) the reward, so it must be positive.
ALGO_BOUNDS = {"beta": dict(low=0, above=True), "label_smoothing": dict(low=0, high=0.5), "lam": dict(low=0),
               "gamma": {}}
RUN_KEYS = ("reference", "packing", "logp_chunk_size", "val_every_n_steps", "checkpoint", "faults", "cache")


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
           above: bool = False, optional: bool = False, note: str = "") -> Problems:
    """A number (an integer with ``integer``) >= low (> low with ``above``) and <= high; null too with ``optional``."""
    if value is None and optional:
        return []
    kinds = (int,) if integer else (int, float)
    fits = isinstance(value, kinds) and not isinstance(value, bool)
    if fits and (low is None or (value > low if above else value >= low)) and (high is None or value <= high):
        return []
    wanted = "an integer" if integer else "a number"
    if low is not None and high is not None:
        wanted += f" in {'(' if above else '['}{low:g}, {high:g}]"
    elif low is not None:
        wanted += f" {'>' if above else '>='} {low:g}"
    return [f"{key}={shown(value)}: must be {wanted}{' or null' if optional else ''}{note}"]


def flag(key: str, value: Any) -> Problems:
    return [] if isinstance(value, bool) else [f"{key}={shown(value)}: must be true or false"]


def unknown_options(key: str, target: Callable, node: dict) -> Problems:
    """Options of ``node`` that ``target`` does not take (Hydra's own keys, _target_ and the like, aside)."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    taken = [name for name in params if name != "self"]
    problems = []
    for option in [option for option in node if not option.startswith("_") and option not in params]:
        close = difflib.get_close_matches(option, taken, n=1)
        hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(taken)}" if len(taken) <= 8 else ""
        problems.append(f"{key}.{option}={shown(node[option])}: {target.__qualname__} takes no such option"
                        + (f"; {hint}" if hint else ""))
    return problems


def target(key: str, node: dict, catalogue: Iterable[str] = ()) -> tuple[Optional[Any], Problems]:
    """The class or function ``node._target_`` names, and what is wrong with it or with the options given to it."""
    module, _, name = str(node.get("_target_")).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None) if module else None
    except ModuleNotFoundError:
        found = None
    if found is None:
        listed = f"; choose one of {', '.join(catalogue)}" if catalogue else ""
        return None, [f"{key}._target_={shown(node.get('_target_'))}: no such class or function{listed}"]
    return found, unknown_options(key, found, node)


def algorithm_targets() -> list[str]:
    """The algorithms solopo ships (conf/algo/ names them), for messages."""
    return sorted(f"{algos.__name__}.{name}" for name, obj in vars(algos).items()
                  if inspect.isclass(obj) and obj.__module__ == algos.__name__ and hasattr(obj, "needs_reference"))


def check_algo(algo: dict) -> Problems:
    found, problems = target("algo", algo, algorithm_targets())
    if found is not None and not all(hasattr(found, a) for a in ("needs_reference", "reward", "loss")):
        problems = [f"algo._target_={algo['_target_']}: not an algorithm (one has reward, loss and needs_reference); "
                    f"choose one of {', '.join(algorithm_targets())}"]
    for key, bounds in ALGO_BOUNDS.items():
        if key in algo:
            problems += number(f"algo.{key}", algo[key], **bounds)
    return problems


def check_ra(ra: dict) -> Problems:
    _, problems = target("ra", ra, ["solopo.core.objective.SoLoRA"])
    problems += number("ra.alpha", ra.get("alpha"), 0, note=" (0 turns SoLo-RA off)")
    problems += one_of("ra.distance", ra.get("distance"), DISTANCES)
    responses = ra.get("responses")
    if not (isinstance(responses, list) and responses and set(responses) <= {CHOSEN, REJECTED}):
        problems.append(f"ra.responses={shown(responses)}: choose [chosen] or [chosen,rejected]")
    return problems + flag("ra.detach_short", ra.get("detach_short"))


def check_method(method: dict) -> Problems:
    problems = unknown_options("method", Method, method)
    for key in ("po_context", "pairs_from"):
        problems += one_of(f"method.{key}", method.get(key), (SHORT, LONG))
    return problems + flag("method.use_ra", method.get("use_ra"))


def check_model(model: dict) -> Problems:
    return (unknown_options("model", ModelSpec, model)
            + number("model.max_length", model.get("max_length"), 1, integer=True)
            + one_of("model.dtype", model.get("dtype", "auto"), DTYPES)
            + one_of("model.init_device", model.get("init_device", "cpu"), INIT_DEVICES))


def check_long_len(long_len: Any, short_len: Any, max_length: Optional[int], room: int) -> Problems:
    problems = number("data.short_len", short_len, 1, integer=True, optional=True)
    problems += number("data.long_len", long_len, MIN_LONG_LEN, integer=True,
                       note=" (x_long holds the evidence, ~100 tokens, and irrelevant text)")
    if not problems and short_len is not None and long_len <= short_len:
        problems.append(f"data.long_len={long_len}: must be greater than data.short_len={short_len} (x_long holds "
                        "x_short and more)")
    if not problems and max_length is not None and long_len + room > max_length:
        problems.append(f"data.long_len={long_len}: too long for model.max_length={max_length}; at most "
                        f"{max_length - room} leaves room for the chat template and the response")
    return problems


def check_sampling(sampling: dict, sampled: bool) -> Problems:
    note = " (a pair needs a correct and an incorrect sample)" if sampled else ""
    return (one_of("data.sampling.engine", sampling.get("engine", "transformers"), ENGINES)
            + number("data.sampling.k", sampling.get("k"), 2 if sampled else 1, integer=True, note=note)
            + number("data.sampling.temperature", sampling.get("temperature"), 0, above=True)
            + number("data.sampling.max_new_tokens", sampling.get("max_new_tokens"), 1, integer=True)
            + number("data.sampling.batch_size", sampling.get("batch_size"), 1, integer=True))


def check_data(data: dict, max_length: Optional[int], training: bool = True) -> Problems:
    source = data.get("source") or {}
    problems = (target("data.source", source)[1]
                + number("data.source.n_val", source.get("n_val", 0), 0, integer=True)
                + number("data.source.n_train", source.get("n_train"), 1, integer=True, optional=True)
                + number("data.source.n_test", source.get("n_test", 0), 0, integer=True)
                + one_of("data.template", data.get("template", "direct"), INSTRUCTIONS))
    if not training:  # evaluation reads the data source and the prompt template only
        return problems
    problems += one_of("data.pairs", data.get("pairs"), PAIR_RULES)
    problems += one_of("data.overlong", data.get("overlong"), OVERLONG_POLICIES)
    problems += number("data.batch_size", data.get("batch_size"), 1, integer=True)
    sampling, sampled = data.get("sampling") or {}, data.get("pairs") == "sampled"
    if sampling:
        problems += check_sampling(sampling, sampled)
    # Beside x_long, a training sequence holds the chat template and the response: a sample, or a gold answer.
    new_tokens = sampling.get("max_new_tokens")
    response = new_tokens + 1 if sampled and isinstance(new_tokens, int) else GOLD_RESPONSE_TOKENS
    return problems + check_long_len(data.get("long_len"), data.get("short_len"), max_length,
                                     TEMPLATE_TOKENS + response)


def check_eval_lengths(lengths: Any, max_length: Optional[int]) -> Problems:
    if not (isinstance(lengths, list) and lengths):
        return [f"eval.lengths={shown(lengths)}: must be a list such as [short,1024,2048]"]
    problems = []
    for length in lengths:
        if length == "short":
            continue
        if number("eval.lengths", length, 1, integer=True):
            problems.append(f"eval.lengths={shown(lengths)}: {shown(length)} is neither short nor a number of tokens")
        elif max_length is not None and length + EVAL_ROOM > max_length:
            problems.append(f"eval.lengths={shown(lengths)}: {length} is too long for model.max_length={max_length}; "
                            f"at most {max_length - EVAL_ROOM} leaves room for the chat template and the answer")
    return problems


def check_eval(eval_: dict, max_length: Optional[int]) -> Problems:
    problems = flag("eval.enabled", eval_.get("enabled", True))
    problems += number("eval.n_items", eval_.get("n_items"), 1, integer=True)
    problems += check_eval_lengths(eval_.get("lengths"), max_length)
    depths = eval_.get("depths")
    if not (isinstance(depths, list) and depths and not any(number("eval.depths", d, 0, 1) for d in depths)):
        problems.append(f"eval.depths={shown(depths)}: each depth must be a number in [0, 1] (0 = start, 1 = end "
                        "of the context)")
    problems += number("eval.max_new_tokens", eval_.get("max_new_tokens"), 1, integer=True)
    problems += number("eval.batch_size", eval_.get("batch_size"), 1, integer=True)
    return problems + one_of("eval.engine", eval_.get("engine", "transformers"), ENGINES)


def check_optim(optim: dict) -> Problems:
    betas = optim.get("betas")
    problems = number("optim.lr", optim.get("lr"), 0, above=True)
    problems += number("optim.weight_decay", optim.get("weight_decay", 0.0), 0)
    if not (isinstance(betas, list) and len(betas) == 2 and not any(number("", b, 0, 1) or b == 1 for b in betas)):
        problems.append(f"optim.betas={shown(betas)}: must be two numbers in [0, 1), e.g. [0.9,0.95]")
    problems += number("optim.warmup_ratio", optim.get("warmup_ratio", 0.0), 0, 1)
    problems += number("optim.min_lr_ratio", optim.get("min_lr_ratio", 0.0), 0, 1)
    return problems + number("optim.schedule_steps", optim.get("schedule_steps"), 1, integer=True, optional=True)


def accelerator_problems(accelerator: Any, gpu_visible: bool) -> Problems:
    return [f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=default (GPU when present) or "
            "trainer=cpu"] if accelerator in ("gpu", "cuda") and not gpu_visible else []


def check_accelerator(accelerator: str) -> None:
    problems = accelerator_problems(accelerator, torch.cuda.is_available())
    if problems:
        raise SystemExit(problems[0])


def check_trainer(trainer: dict, gpu_visible: bool) -> Problems:
    _, problems = target("trainer", trainer)
    problems += accelerator_problems(trainer.get("accelerator"), gpu_visible)
    problems += one_of("trainer.precision", str(trainer.get("precision", "auto")), PRECISIONS)
    if trainer.get("max_steps", -1) != -1:
        problems += number("trainer.max_steps", trainer["max_steps"], 1, integer=True,
                           note=" (or -1: the epochs decide)")
    return problems + number("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1,
                             integer=True)


def check_run(top: dict) -> Problems:
    """The top-level keys of conf/config.yaml."""
    checkpoint, faults = top.get("checkpoint") or {}, top.get("faults") or {}
    problems = one_of("reference", top.get("reference", "cached"), ("cached", "live"))
    problems += one_of("packing", top.get("packing", False), PACKINGS)
    problems += one_of("cache.verify", (top.get("cache") or {}).get("verify", "warn"), VERIFY)
    problems += number("logp_chunk_size", top.get("logp_chunk_size", 1024), 1, integer=True)
    problems += number("val_every_n_steps", top.get("val_every_n_steps"), 1, integer=True, optional=True)
    problems += number("checkpoint.every_n_steps", checkpoint.get("every_n_steps"), 1, integer=True, optional=True)
    problems += number("checkpoint.every_n_minutes", checkpoint.get("every_n_minutes"), 0, above=True, optional=True)
    if checkpoint.get("every_n_steps") and checkpoint.get("every_n_minutes"):
        problems.append("set checkpoint.every_n_steps or checkpoint.every_n_minutes, not both")
    return problems + number("faults.max_consecutive_bad_steps", faults.get("max_consecutive_bad_steps", 3), 1,
                             integer=True)


def check_packing_kernel(packing: Any, attn_implementation: Any) -> Problems:
    """Shared prompts need an attention kernel that takes their mask (solopo.step.shared_prompt)."""
    if packing != SHARED_PROMPT or attn_implementation in shared_prompt.KERNELS:
        return []
    return [f"packing={SHARED_PROMPT} needs model.attn_implementation={' or '.join(shared_prompt.KERNELS)} "
            f"(got {shown(attn_implementation)})"]


def validate_config(cfg: DictConfig, training: bool = True) -> None:
    """Stops the run (SystemExit, one line) when the config holds a mistake; ``training=False`` checks only what
    evaluation reads (the model, the data source and prompt template, eval)."""
    # First, and alone: every other data key that reads ${data.path} would fail to resolve without it.
    if OmegaConf.is_missing(cfg.data, "path"):
        option = _choice(cfg, "data")
        raise SystemExit(f"data={option} needs data.path=FILE (see conf/data/{option}.yaml)")
    model, data, eval_ = (_plain(cfg, key) for key in ("model", "data", "eval"))
    max_length = model.get("max_length") if not number("", model.get("max_length"), 1, integer=True) else None
    problems = check_model(model) + check_data(data, max_length, training) + check_eval(eval_, max_length)
    if training:
        problems += check_algo(_plain(cfg, "algo")) + check_ra(_plain(cfg, "ra")) + check_method(_plain(cfg, "method"))
        problems += check_optim(_plain(cfg, "optim")) + check_trainer(_plain(cfg, "trainer"), torch.cuda.is_available())
        problems += check_run({key: _plain(cfg, key) if OmegaConf.is_config(cfg.get(key)) else cfg.get(key)
                               for key in RUN_KEYS if key in cfg})
        problems += check_packing_kernel(cfg.get("packing", False), model.get("attn_implementation", "sdpa"))
    if problems:
        raise SystemExit("; ".join(problems))


def load_source(cfg: DictConfig):
    """The items of ``data.source``; a malformed data file stops the run with its own one-line message (file, line,
    field) instead of Hydra's instantiation error around it."""
    try:
        return instantiate(cfg.data.source)
    except InstantiationException as err:
        if isinstance(err.__cause__, DataFileError):
            raise SystemExit(str(err.__cause__)) from None
        raise


def _plain(cfg: DictConfig, key: str) -> dict:
    node = cfg.get(key)
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def _choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for a config group (data=musique -> musique), inside a Hydra app or a composed config."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices[group]
    return OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=group)

