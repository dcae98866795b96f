"""A training run's preference pairs, from its loaded splits to tokenised pairs and their counts: each split's
examples, the pairs made with the tokenizer alone before the model loads, the pairs sampled from the policy
(data.pairs=sampled), and why a split has none. solopo.data.pairs makes an item's examples; this module makes a run's
pairs from its config. What the data gives, found wrong once the run has begun, ends it as a failed run
(``failed_on_data``)."""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

from omegaconf import DictConfig

from solopo.cache import DiskCache
from solopo.data.pairs import UnusableItem, to_examples
from solopo.data.schema import PreferenceExample, QAItem
from solopo.data.tokenize import OverlongPair, token_counter, tokenize_examples
from solopo.generation.sampling import sample_pairs
from solopo.generation.vllm_engine import saved_weights
from solopo.models.loading import ModelSpec, weights_path
from solopo.settings.build import ConfigError, Settings, choice, command_line, set_in_own_config
from solopo.settings.rules import COMMAND_LINE, FILE_OF_PAIRS, check_pairs_long_len, check_pairs_sampled
from solopo.training.models import compute_device, generation_identity
from solopo.training.results import RunFailed

log = logging.getLogger("solopo")


def make_examples(cfg: DictConfig, splits, tokenizer) -> dict[str, list]:
    """Each split's examples with their short and long contexts, built with the tokenizer alone, so an item that
    cannot make a pair at these lengths stops the run in one line before the model loads. Each split's long
    contexts draw on its own passages where the source keeps them apart (built-in QA)."""
    count_tokens = token_counter(tokenizer)
    source = f"data.path={cfg.data.path}" if "path" in cfg.data else f"data={choice(cfg, 'data')}"
    try:
        return {split: to_examples(items, cfg.data.long_len, count_tokens, pairs=cfg.data.pairs, seed=cfg.seed,
                                   pool=pool, template=cfg.data.get("template", "direct"),
                                   short_len=cfg.data.get("short_len"))
                for split, items, pool in (("train", splits.train, splits.distractors),
                                           ("val", splits.val, splits.val_distractors or splits.distractors))}
    except UnusableItem as err:
        raise ConfigError(f"{source}: {err}") from None


def check_file_settings(cfg: DictConfig, settings: Settings, splits) -> None:
    """data.long_len and data.pairs against what a data=pairs file holds, known once it is read
    (rules.check_pairs_long_len, rules.check_pairs_sampled)."""
    if choice(cfg, "data") != FILE_OF_PAIRS or not splits.train:
        return
    passages = isinstance(splits.train[0], QAItem)
    given = {override.partition("=")[0].lstrip("+~") for override in command_line(cfg)[0]}
    set_in = COMMAND_LINE if "data.long_len" in given else set_in_own_config(cfg, "data.long_len")
    problems = (check_pairs_long_len(cfg.data.long_len, settings.model.max_length, passages, set_in, cfg.data.path)
                + check_pairs_sampled(cfg.data.pairs, passages, cfg.data.path))
    if problems:
        raise ConfigError(problems[0])


def samples_pairs(cfg: DictConfig, items: list) -> bool:
    """Whether a split's pairs are sampled from the policy (data.pairs=sampled on items to build them from), not
    ready-made or gold pairs, which the tokenizer alone makes."""
    return cfg.data.pairs == "sampled" and bool(items) and not isinstance(items[0], PreferenceExample)


def fixed_pairs(cfg: DictConfig, settings: Settings, splits, examples_of: dict[str, list],
                tokenizer) -> dict[str, tuple[list, dict]]:
    """The tokenised pairs and counts of each split that samples none, made before the model loads: a pair over
    model.max_length under data.overlong=error, or a training split whose every pair is over it, stops the run
    before a large model has loaded for nothing."""
    return {split: tokenized_pairs(cfg, settings.model.max_length, split, examples_of[split], tokenizer, {})
            for split, items in (("train", splits.train), ("val", splits.val)) if not samples_pairs(cfg, items)}


def make_pairs(cfg: DictConfig, settings: Settings, splits, examples_of: dict[str, list], tokenizer,
               policy, fixed: Optional[dict[str, tuple[list, dict]]] = None) -> tuple[dict[str, list], dict]:
    """Tokenised preference pairs per split (sampled on-policy when data.pairs=sampled; ``fixed``: the splits
    ``fixed_pairs`` made already), and what was built, sampled or skipped."""
    spec, sampling = settings.model, settings.sampling
    pairs, counts = {}, {}
    for split, items in (("train", splits.train), ("val", splits.val)):
        if fixed and split in fixed:
            pairs[split], counts[split] = fixed[split]
            continue
        examples, counts[split] = examples_of[split], {}
        if samples_pairs(cfg, items):
            policy.to(compute_device(cfg))
            with sampling_weights(sampling.engine, spec, policy, tokenizer) as path:
                examples, counts[split]["sampling"] = sample_pairs(
                    examples, policy, tokenizer, sampling, settings.method.pairs_from,
                    generation_identity(spec, cfg.seed), cache=DiskCache.under_root("pairs", cfg.cache.verify),
                    model_path=path)
        pairs[split], counts[split] = tokenized_pairs(cfg, spec.max_length, split, examples, tokenizer, counts[split])
    if splits.skipped:  # records the loader left out (e.g. unanswerable), by reason
        counts["source"] = {"skipped": dict(splits.skipped)}
    return pairs, counts


def sampling_weights(engine: str, spec: ModelSpec, policy, tokenizer):
    """The directory vLLM loads (the model's own weights, or a random model written out for it); None otherwise."""
    if engine != "vllm":
        return contextlib.nullcontext(None)
    return saved_weights(policy, tokenizer) if spec.random_init is not None else contextlib.nullcontext(weights_path(spec))


def tokenized_pairs(cfg: DictConfig, max_length: int, split: str, examples: list, tokenizer,
                    counts: dict) -> tuple[list, dict]:
    """One split's examples tokenised, and ``counts`` with what was kept, truncated and skipped; a training split
    left without pairs stops the run, a validation split without them is a warning."""
    with failed_on_data():
        pairs, skipped = tokenize_examples(examples, tokenizer, max_length, cfg.data.overlong, cfg.data.truncate)
    if not pairs and not examples and split == "val":  # data.source.n_val=0: asked for, nothing to fix
        log.info("no validation split (data.source.n_val=0): training runs without validation metrics")
    elif not pairs:
        why = why_no_pairs(split, counts, skipped, cfg.data.overlong == "truncate")
        if split == "train":
            raise RunFailed("no pairs", why)
        log.warning("%s: training runs without validation metrics", why)  # e.g. sampling found no right answer
    mean_tokens = {c: sum(len(p.prompts[c]) for p in pairs) / max(len(pairs), 1) for c in ("short", "long")}
    return pairs, {**counts, "pairs": len(pairs), "truncated": skipped.pop("truncated", 0), "skipped": dict(skipped),
                   "mean_tokens": mean_tokens}


def why_no_pairs(split: str, counts: dict, skipped, truncating: bool = False) -> str:
    """Why a split has no pairs, in one line: no sampled question had both a correct and an incorrect sample (with
    what to change), or every pair was over model.max_length (``truncating``: under data.overlong=truncate)."""
    name = {"train": "training", "val": "validation"}[split]
    sampled = counts.get("sampling")
    if sampled is not None and not sampled["kept"]:
        return (f"no {name} pairs: 0 of {sampled['items']} questions had both a correct and an incorrect sample "
                f"({100 * sampled['share_correct']:.1f}% of samples correct, {sampled['k']} per question); use "
                f"data.pairs=gold, more samples (data.sampling.k), or a stronger model")
    if truncating:  # the pairs over model.max_length had no context truncation could cut enough of
        return (f"no {name} pairs: every one was skipped ({dict(skipped) or 'none built'}), data.overlong=truncate "
                "finding too little context to cut (the text of the last user message before its last paragraph, or "
                "before the paragraph with the question; the rest is kept whole); raise model.max_length or shorten "
                "the prompts")
    return (f"no {name} pairs: every one was skipped ({dict(skipped) or 'none built'}); raise model.max_length, "
            f"lower data.long_len, or set data.overlong=truncate")


def repeats_note(n_pairs: int, max_steps: int, pairs_per_step: int, limit: float = 3.0) -> str | None:
    """A warning when fixed steps would show each training pair more than ``limit`` times (few pairs were kept, e.g.
    on-policy sampling on long contexts): a run that repeats a handful of pairs mostly memorises them."""
    seen = max_steps * pairs_per_step  # per process: a lower bound over several processes
    if max_steps <= 0 or n_pairs <= 0 or seen <= limit * n_pairs:
        return None
    return (f"{n_pairs} training pairs for {max_steps} steps of {pairs_per_step}: each pair is seen about "
            f"{seen / n_pairs:.0f} times")


@contextlib.contextmanager
def failed_on_data():
    """What the data gave, found wrong once the run has begun (a malformed record, an item that cannot make a pair, a
    bad benchmark file, a pair over model.max_length under data.overlong=error), ends it as a failed run, "bad data":
    its one line, and failed.json in the run directory that Hydra made, so that a report lists the run and why."""
    try:
        yield
    except (ConfigError, OverlongPair) as err:
        raise RunFailed("bad data", str(err)) from None
