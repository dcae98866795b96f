"""A training run's models: the policy and its reference loaded (solopo.models.loading does the loading; this module
chooses from the run's config what to load and logs it), the device they compute on, what the numbers cached from them
depend on, the cached reference's log-probs and model.gradient_checkpointing=auto's plan. solopo.training.pipeline
calls these with the run's config and settings."""
from __future__ import annotations

import functools
import json
import logging
from typing import Optional

import torch
from omegaconf import DictConfig

from solopo.cache import DiskCache
from solopo.data.collate import PairCollator
from solopo.models import kernels
from solopo.models.blocks import decoder_layers
from solopo.models.lora import linear_names, unmatched_targets
from solopo.models.loading import ModelSpec, freeze, half_precision_trained, init_device, load_model, with_lora
from solopo.settings.build import ConfigError, Settings
from solopo.settings.rules import processes
from solopo.step.checkpointing import auto_checkpointing
from solopo.step.context_parallel import Share
from solopo.step.largest_step import step_tokens
from solopo.training.callbacks import StageCosts
from solopo.training.distributed import local_gpu
from solopo.training.lightning_run import strategy_of
from solopo.training.precision import autocast_dtype, weights_dtype
from solopo.training.reference import SplitReference, with_reference_logps

log = logging.getLogger("solopo")


def compute_device(cfg: DictConfig) -> torch.device:
    return local_gpu() if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else torch.device("cpu")


def model_identity(spec: ModelSpec, seed: int) -> str:
    """What cached numbers computed with this model depend on (a random model is defined by its seed)."""
    drawn_on = init_device(spec.init_device).type if spec.random_init else "cpu"  # a GPU draws other numbers
    return json.dumps([spec.name, spec.random_init, seed if spec.random_init else None, spec.dtype]
                      + ([drawn_on] if drawn_on != "cpu" else []))


def generation_identity(spec: ModelSpec, seed: int) -> str:
    """model_identity for what the model generates (evaluation tables, sampled pairs), which also depends on how a
    decoding step attends (model.decode_kv_heads: the two answer differently at near ties in bf16). Entries cached
    before the setting existed are not reused by either: which step made them depended on the transformers installed."""
    return json.dumps([model_identity(spec, seed), spec.decode_kv_heads])


def load_models(cfg: DictConfig, settings: Settings, tokenizer):
    """The policy (with its LoRA adapter) and a live reference, or None where the reference is cached log-probs, the
    policy without its adapter, or not needed; and whether it is cached."""
    spec, algo = settings.model, settings.algo
    cached = algo.needs_reference and cfg.reference == "cached"
    policy = load_model(spec, tokenizer, seed=cfg.seed)
    kernels.log_liger_choice(spec.liger, policy.config.model_type)  # once: a live reference gets the policy's kernels
    if spec.gradient_checkpointing is True:  # the policy's: a frozen reference never recomputes (eval mode)
        log.info("model.gradient_checkpointing=true: all %d decoder layers checkpointed", len(decoder_layers(policy)))
    if spec.lora:
        if missing := unmatched_targets((name for name, _ in policy.named_modules()), spec.lora):
            raise ConfigError(f"model.lora.target_modules: no module of {spec.name} is named {' or '.join(missing)} "
                              f"(its linear layers: {', '.join(linear_names(policy))})")
        policy = with_lora(policy, spec.lora)
    live = algo.needs_reference and not cached
    reference = freeze(load_model(spec, tokenizer, seed=cfg.seed)) if live and not spec.lora else None
    log.info("model %s: %.1fM parameters (%.1fM trained); reference: %s", spec.name,
             sum(p.numel() for p in policy.parameters()) / 1e6,
             sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6,
             "precomputed log-probs" if cached else "the policy without its adapter" if live and spec.lora
             else "frozen model" if live else "none")
    if settings.precision.endswith("-mixed") and (half := half_precision_trained(policy)):
        log.warning("%.1fM trained parameters are %s, with no fp32 master copy under %s: most small updates are lost; "
                    "model.dtype=float32 keeps fp32 weights under it", half / 1e6, spec.dtype, settings.precision)
    return policy, reference, cached


def with_cached_reference(cfg: DictConfig, settings: Settings, policy, tokenizer, pairs: dict, keys: dict,
                          share: Optional[Share] = None) -> dict:
    """The pairs with the reference's log-probs: before the first update, the policy is the reference. ``share``:
    this process's place in its context group, whose processes split the long sequences together."""
    policy.to(compute_device(cfg))
    return {split: with_reference_logps(
        policy, split_pairs, keys[split], model_identity(settings.model, cfg.seed), settings.precision,
        tokenizer.pad_token_id, DiskCache.under_root("reference", cfg.cache.verify), batch_size=cfg.data.batch_size,
        chunk_size=cfg.logp_chunk_size, pack=cfg.packing, desc=f"reference log-probs ({split})",
        weights=weights_dtype(strategy_of(cfg), settings.precision), context=settings.context,
        share=share) if split_pairs else split_pairs
        for split, split_pairs in pairs.items()}


def cached_reference(cfg: DictConfig, settings: Settings, policy, tokenizer, pairs: dict, keys: dict,
                     stages: StageCosts) -> tuple[dict, tuple]:
    """The pairs with the cached reference's log-probs, and the callbacks the fit needs: under context parallelism
    the pass splits the long sequences over processes that exist only in the fit (SplitReference), so the pairs come
    back without them, to be completed in place (and its time counts in the training stage)."""
    compute = functools.partial(with_cached_reference, cfg, settings, policy, tokenizer, pairs, keys)
    if settings.context.size > 1:
        return pairs, (SplitReference(compute, pairs),)
    with stages("reference"):
        return compute(), ()


def plan_checkpointing(cfg: DictConfig, settings: Settings, policy, pairs: list, collate: PairCollator,
                       reference=None) -> None:
    """model.gradient_checkpointing=auto: the decoder layers to checkpoint for the largest training step, in each
    layout the training loader's ``collate`` gives a batch of ``pairs``, beside a live ``reference``'s weights."""
    steps = step_tokens(pairs, collate.keys, cfg.data.batch_size, collate.layout_for)
    strategy = strategy_of(cfg)
    # FSDP shards the state over all processes: trainer.devices=auto (the fsdp preset's) is every GPU of the node
    sharded = (processes(cfg.trainer, torch.cuda.device_count()) or 1) if "FSDP" in strategy else 1
    compute = weights_dtype(strategy, settings.precision) or autocast_dtype(settings.precision)
    plan = auto_checkpointing(policy, steps, cfg.logp_chunk_size, compute_device(cfg), compute, sharded,
                              beside=[reference] if reference is not None else [])
    log.info("%s, for steps of up to %d tokens", plan.describe(), max(step.total for step in steps))
