"""The config keys a run reads, and the problems of a command line or config that go past them: keys nothing reads
(+foo=1), an evaluation's overrides that only training reads, and deletions (~KEY) of keys the run reads. The checks
take the config and the command line and return their problems under their config keys; the rules between the values
of several groups are solopo.settings.rules'."""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from solopo.eval.longctx import SCHEDULE
from solopo.preflight import group_names
from solopo.settings.fields import Problems, shown
from solopo.settings.other_names import suggestion

# The keys solopo's code reads: each group of conf/config.yaml's defaults list and the run's own keys at the top, and
# the data group's keys beside its source (a format's other keys, data.path, data.split, ..., are read by its source's
# interpolations: keys_interpolated)
ROOT_KEYS = ("algo", "ra", "method", "data", "model", "trainer", "eval", "logger", "optim", "ckpt_path", "hydra", "seed",
             "reference", "packing", "logp_chunk_size", "val_every_n_steps", "save_model", "optimized_metric",
             "checkpoint", "faults", "cache")
DATA_KEYS = ("source", "pairs", "sampling", "template", "long_len", "short_len", "overlong", "truncate", "batch_size",
             "num_workers")
INTERPOLATED = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"ra": {"alpha": 1.0}} -> {"ra.alpha": 1.0}; a list becomes its JSON text, so it compares and prints as one."""
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(value) if isinstance(value, list) else value}


def keys_interpolated(cfg: DictConfig) -> set[str]:
    """Every key the config reads by interpolation (${data.path} -> data.path), the run's own and Hydra's: a key
    nothing else reads may be one that others take their value from."""
    text = str(OmegaConf.to_container(cfg, resolve=False))
    return set(INTERPOLATED.findall(text))


def unread(key: str, given: dict, known: Sequence[str], reader: str, others: bool = True,
           hints: Sequence[str] = ()) -> Problems:
    """The keys of ``given`` outside ``known``, each with a hint: the run's key for a name TRL or Hugging Face give it
    (``others``), else the closest of ``known`` and ``hints`` (names a command line may mean without being keys of
    the config, such as the config groups it picks options of: expriment=... is experiment=...)."""
    problems = []
    for name in [name for name in given if name not in known]:
        close = suggestion(f"{key}{name}", [*known, *hints], others)
        value = "" if isinstance(given[name], dict) else f"={shown(given[name])}"
        problems.append(f"{key}{name}{value}: {reader} reads no such key" + (f"; did you mean {close}?" if close else ""))
    return problems


def training_reads(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The keys a training run reads: at the top of the config, and in the data group."""
    interpolated = keys_interpolated(cfg)
    return (list(ROOT_KEYS) + [k.split(".")[0] for k in interpolated],
            list(DATA_KEYS) + [k.split(".")[1] for k in interpolated if k.startswith("data.")])


def check_unread_keys(cfg: DictConfig, data_option: str) -> Problems:
    """Keys that nothing reads, at the top of the config (+foo=1) or in the data group (+data.foo=1), which the run
    would otherwise ignore in silence; a data.path the chosen source does not read (+data.path=FILE with the built-in
    data=qa) has its own message."""
    top_read, read = training_reads(cfg)
    problems = unread("", OmegaConf.to_container(cfg, resolve=False), top_read, "solopo", hints=group_names())
    data = OmegaConf.to_container(cfg.data, resolve=False)
    if "path" in data and "path" not in read:
        problems.append(f"data.path={data.pop('path')}: data={data_option} reads no file; choose a file format "
                        "(data=pairs, musique, hotpotqa, twowiki, longbench)")
    return problems + unread("data.", data, read, f"data={data_option}")


# What an evaluation (solopo-eval, solopo.evaluate) reads besides Hydra's own keys: the model, the eval group, the data
# source and its prompt template, the trainer's precision (the answers' autocast) and the seed; and every key these read
# by interpolation (evaluation_reads: data.source.path reads data.path, data.source.n_test eval.n_items).
EVALUATION_KEYS = ("model", "eval", "data.source", "data.template", "trainer.precision", "seed")
# Keys among those whose value changes nothing an evaluation uses: the eval group's keys that say whether and when a
# training run evaluates, and the cap on training items (the held-out questions and their passages are the same
# whatever it is: solopo.data.world.qa_items builds each split apart, split_items caps training after the split).
UNUSED_BY_EVALUATION = ("eval.enabled", *(f"eval.{key}" for key in SCHEDULE), "data.source.n_train")


def as_written(cfg: DictConfig, key: str) -> Any:
    """The value at ``key`` with its interpolations unresolved (None where the config has no such key)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    return OmegaConf.to_container(node, resolve=False).get(leaf) if OmegaConf.is_dict(node) else None


def evaluation_reads(cfg: DictConfig) -> set[str]:
    """EVALUATION_KEYS and the keys they read by interpolation, followed on."""
    read, todo = set(), list(EVALUATION_KEYS)
    while todo:
        key = todo.pop()
        if key not in read:
            read.add(key)
            todo += INTERPOLATED.findall(str(as_written(cfg, key)))
    return read


def read_in(key: str, read: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``read``, lies inside one, or holds one (the trainer group holds trainer.precision)."""
    return any(key == r or key.startswith(f"{r}.") or r.startswith(f"{key}.") for r in read)


def training_only(cfg: DictConfig, overrides: Sequence[str], groups: Iterable[str]) -> list[str]:
    """The command line's ``overrides`` that training reads and an evaluation does not (algo.beta=0.3,
    trainer.max_steps=5, algo=dpo; UNUSED_BY_EVALUATION: eval.every_n_steps=5, data.source.n_train=5), which it would
    ignore. ``groups``: the config groups, whose choice is read where the group's keys are; a group placed at the top
    of the config (experiment=, debug=) may set any key, and Hydra's own keys are Hydra's. Keys nothing reads are
    check_unread_keys'."""
    evaluation, (top, data) = evaluation_reads(cfg), training_reads(cfg)
    groups, found = set(groups), []
    for override in overrides:
        key = override_key(override)
        parts = key.split(".")
        if key in groups:
            trained = key in cfg  # not a group placed at the top
        else:
            trained = parts[0] in top and (parts[0] != "data" or len(parts) == 1 or parts[1] in data)
        unused = any(key == r or key.startswith(f"{r}.") for r in UNUSED_BY_EVALUATION)
        if trained and not parts[0].startswith("hydra") and (unused or not read_in(key, evaluation)):
            found.append(override)
    return found


def override_key(override: str) -> str:
    """The key or config group an override sets (+algo.beta=0.3 -> algo.beta, ~logger -> logger, algo@x=dpo -> algo)."""
    return override.partition("=")[0].lstrip("+~").split("@")[0]


def check_evaluation_overrides(cfg: DictConfig, overrides: Sequence[str], groups: Iterable[str]) -> Problems:
    """An evaluation's command-line overrides that only training reads, each named, rather than ignored in silence."""
    groups = set(groups)
    return [f"{override.lstrip('+')}: only training reads "
            + (f"the {override_key(override)} group" if override_key(override) in groups else "this key")
            + "; solopo-eval would ignore it" for override in training_only(cfg, overrides, groups)]


# Keys whose absence the code takes as "none of it", as a shipped option of their group leaves them out: no experiment
# logger (logger=none; solopo.training.lightning_run.make_logger), no benchmark (eval=default: the held-out questions),
# no sampling block (data=pairs; data.pairs=sampled without one is named by build_sampling). Deleting one is a choice.
OPTIONAL = ("logger", "eval.benchmark", "data.sampling")


def check_deletions(cfg: DictConfig, overrides: Sequence[str], groups: Iterable[str],
                    training: bool = True) -> Problems:
    """~KEY on the command line that deletes what the run reads: for training, the keys at the top of the config that
    training_reads lists but Hydra's (~seed, ~trainer.max_steps, ~data.template); for an evaluation, evaluation_reads
    (~trainer holds trainer.precision). The run then stopped in a traceback (~seed: data.sampling.seed reads it), on
    keys it did not name (~trainer: trainer._target_) or read a default in silence (~data.template). OPTIONAL keys may
    go; an evaluation's deletion of a key only training reads is check_evaluation_overrides'."""
    if training:
        read, reader, ignored = {key for key in training_reads(cfg)[0] if key != "hydra"}, "solopo-train", []
    else:
        read, reader, ignored = evaluation_reads(cfg), "solopo-eval", training_only(cfg, overrides, groups)
    problems = []
    for override in [o for o in overrides if o.startswith("~") and o not in ignored]:
        key = override_key(override)
        held = [r for r in read if r == key or r.startswith(f"{key}.")]
        if not held and read_in(key, read):  # inside a key it reads: ~model.liger
            held = [key]
        held = sorted(r for r in held if not any(r.startswith(f"{other}.") for other in held))  # eval, not eval.x
        if held and key not in OPTIONAL:
            problems.append(f"{override}: deletes {', '.join(held)}, which {reader} reads")
    return problems
