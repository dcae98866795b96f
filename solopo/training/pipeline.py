"""A training run, from its config to results.json: settings, data, pairs, the reference's log-probs, the base
model's evaluation, the fit, the trained model's evaluation and its saving.

solopo.run (the console script solopo-train) calls ``train`` with Hydra's config; this is the only module below
the entry points that reads a DictConfig, and it hands typed settings (solopo.settings) to everything it calls;
the Trainer, the fit and how a run ends are solopo.training.lightning_run's.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

import solopo
from solopo.cache import DiskCache
from solopo.core.objective import required_sequences
from solopo.data.collate import PairCollator, plain_po
from solopo.data.pairs import UnusableItem, to_examples
from solopo.data.schema import PreferenceExample, QAItem
from solopo.data.tokenize import OverlongPair, token_counter, tokenize_examples
from solopo.eval import runner
from solopo.eval.runner import RunEvaluation
from solopo.generation.sampling import sample_pairs
from solopo.generation.vllm_engine import saved_weights
from solopo.models import kernels
from solopo.models.blocks import decoder_layers
from solopo.models.lora import linear_names, unmatched_targets
from solopo.models.loading import (ModelSpec, freeze, half_precision_trained, init_device, load_model, load_tokenizer,
                                   save_policy, weights_path, with_lora)
from solopo.records import DataFileError
from solopo.step.checkpointing import AUTO, auto_checkpointing
from solopo.step.largest_step import step_tokens
from solopo.step.context_parallel import Share
from solopo.settings.build import (ConfigError, Settings, build_settings, choice, command_line, load_source,
                                   refuse_missing_model, set_in_own_config, vllm_args)
from solopo.settings.rules import COMMAND_LINE, FILE_OF_PAIRS, check_eval_metric, check_pairs_long_len
from solopo.training.callbacks import Preemption, StageCosts
from solopo.training.distributed import local_gpu
from solopo.training.eval_callback import eval_during_training
from solopo.training.module import ALL_SEQUENCES, SoLoPOModule
from solopo.training.precision import autocast_dtype, weights_dtype
from solopo.training.reference import SplitReference, with_reference_logps
from solopo.training.results import (RunFailed, final_metrics, redact, where_it_ran, with_earlier_fits,
                                     with_recorded_training)
from solopo.training.lightning_run import finish_run, fit, strategy_of
from solopo.training.resume import ResumableLoader, completed_results, refuse_other_weights, resolve_ckpt_path

log = logging.getLogger("solopo")


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


def compute_device(cfg: DictConfig) -> torch.device:
    return local_gpu() if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else torch.device("cpu")


def make_evaluation(cfg: DictConfig, settings: Settings, splits, tokenizer) -> RunEvaluation | None:
    """This run's evaluation as the eval group describes it (solopo.eval.runner.make_evaluation, as
    `python -m solopo.evaluate` builds it), or None when it is off or the data has no held-out questions; a benchmark
    file that is missing or malformed stops the run here, before the model loads."""
    if settings.eval is None:
        return None
    spec = settings.model
    try:
        return runner.make_evaluation(tokenizer, settings.eval, spec.max_length, settings.benchmark, splits,
                                      cfg.eval.n_items, DiskCache.under_root("eval", cfg.cache.verify),
                                      generation_identity(spec, cfg.seed), vllm_args(cfg))
    except DataFileError as err:
        raise ConfigError(str(err)) from None
    except runner.NoHeldOutQuestions as err:
        log.warning("evaluation skipped: %s; set eval.enabled=false to train on them without it", err)
        return None
    except ValueError as err:
        log.warning("evaluation skipped: %s", err)
        return None


def sampling_weights(engine: str, spec: ModelSpec, policy, tokenizer):
    """The directory vLLM loads (the model's own weights, or a random model written out for it); None otherwise."""
    if engine != "vllm":
        return contextlib.nullcontext(None)
    return saved_weights(policy, tokenizer) if spec.random_init is not None else contextlib.nullcontext(weights_path(spec))


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


def step_sequences(settings: Settings, pairs: dict) -> tuple[dict[str, list], bool]:
    """The (context, response) sequences a step runs per pair, by split, and whether the data is plain PO."""
    plain = plain_po(pair for split_pairs in pairs.values() for pair in split_pairs)
    ra, train = settings.ra, required_sequences(settings.method, settings.ra, plain_po=plain)
    term = f"SoLo-RA alpha={ra.alpha} on {','.join(ra.responses)}" if settings.method.use_ra and ra.active and not plain \
        else "no SoLo-RA"
    log.info("method %s, %s, %s; sequences per pair: %s", settings.method.name, type(settings.algo).__name__, term,
             ", ".join("/".join(k) for k in train))
    if plain:
        log.info("plain PO data (prompt_long = prompt_short in every pair): SoLo-RA is not applicable, so no "
                 "long-context sequence is run and no ra_loss or ra/gap is reported")
    return {"train": train, "val": train if plain else ALL_SEQUENCES}, plain


def make_loader(cfg: DictConfig, pairs: list, keys, pad_token_id: int, shuffle: bool, kernel: str,
                context_parallel: int) -> DataLoader:
    collate = PairCollator(keys, pad_token_id, pack=cfg.packing, device=compute_device(cfg).type, kernel=kernel)
    options = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, collate_fn=collate)
    # The training loader's order and position go into checkpoints, so a resumed run sees the batches it would have.
    # Both loaders draw from their own generator: the global RNG, which checkpoints restore, is left to the model.
    # Over several processes each batch group takes its slice of every global batch (solopo.training.resume.shard_order);
    # the processes of a context group share one.
    return ResumableLoader(pairs, seed=cfg.seed, shuffle=shuffle, context_parallel=context_parallel, **options)


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


def plan_checkpointing(cfg: DictConfig, settings: Settings, policy, pairs: list, collate: PairCollator) -> None:
    """model.gradient_checkpointing=auto: the decoder layers to checkpoint for the largest training step, in each
    layout the training loader's ``collate`` gives a batch of ``pairs``."""
    steps = step_tokens(pairs, collate.keys, cfg.data.batch_size, collate.layout_for)
    strategy = strategy_of(cfg)
    sharded = int(cfg.trainer.devices) if "FSDP" in strategy and str(cfg.trainer.devices).isdigit() else 1
    compute = weights_dtype(strategy, settings.precision) or autocast_dtype(settings.precision)
    plan = auto_checkpointing(policy, steps, cfg.logp_chunk_size, compute_device(cfg), compute, sharded)
    log.info("%s, for steps of up to %d tokens", plan.describe(), max(step.total for step in steps))


def after_fit(cfg: DictConfig, trainer: pl.Trainer, module, policy, tokenizer, val_loader, evaluation,
              tables: dict, run_dir: Path, metrics: dict, during=None) -> dict:
    """The trained model (with eval.keep_best, the best step's weights: ``during``), its final validation, evaluation
    and saving; ``metrics`` (the fit's) with the validation's."""
    if during is not None:
        during.restore_best()
    if val_loader is not None:
        trainer.validate(module, dataloaders=val_loader, verbose=False)
        metrics = {**metrics, **final_metrics(trainer.callback_metrics)}
    if evaluation is not None:
        policy.to(trainer.strategy.root_device)  # Lightning's teardown moves a single-device model to the CPU
        tables["trained"] = evaluation(policy, "trained")
    if cfg.save_model:  # every rank takes part: sharded weights are gathered first
        save_policy(policy, tokenizer, run_dir / "model", dtype=autocast_dtype(trainer.precision),
                    merge_lora=cfg.save_model == "merged")
    return metrics


@contextlib.contextmanager
def failed_on_data():
    """What the data gave, found wrong once the run has begun (a malformed record, an item that cannot make a pair, a
    bad benchmark file, a pair over model.max_length under data.overlong=error), ends it as a failed run, "bad data":
    its one line, and failed.json in the run directory that Hydra made, so that a report lists the run and why."""
    try:
        yield
    except (ConfigError, OverlongPair) as err:
        raise RunFailed("bad data", str(err)) from None


def check_file_long_len(cfg: DictConfig, settings: Settings, splits) -> None:
    """data.long_len against what a data=pairs file holds, known once it is read (rules.check_pairs_long_len)."""
    if choice(cfg, "data") != FILE_OF_PAIRS or not splits.train:
        return
    given = {override.partition("=")[0].lstrip("+~") for override in command_line(cfg)[0]}
    set_in = COMMAND_LINE if "data.long_len" in given else set_in_own_config(cfg, "data.long_len")
    if problems := check_pairs_long_len(cfg.data.long_len, settings.model.max_length,
                                        isinstance(splits.train[0], QAItem), set_in, cfg.data.path):
        raise ConfigError(problems[0])


def load_inputs(cfg: DictConfig, settings: Settings, splits):
    """The tokenizer, each split's examples, the pairs that need no sampling (fixed_pairs) and the evaluation (all
    built with the tokenizer alone: an item that cannot make a pair, a pair over model.max_length under
    data.overlong=error, a bad benchmark file or an optimized_metric the evaluation does not give stops the run before
    the model loads) and the models (load_models)."""
    check_file_long_len(cfg, settings, splits)
    refuse_missing_model(settings.model)  # a missing local folder or an unknown hub id, in one line
    tokenizer = load_tokenizer(settings.model)
    with failed_on_data():
        examples = make_examples(cfg, splits, tokenizer)
        evaluation = make_evaluation(cfg, settings, splits, tokenizer)
    if problems := check_eval_metric(cfg.get("optimized_metric"), evaluation and evaluation.summary_keys()):
        raise ConfigError(problems[0])
    fixed = fixed_pairs(cfg, settings, splits, examples, tokenizer)
    return tokenizer, examples, fixed, evaluation, load_models(cfg, settings, tokenizer)


def run_record(cfg: DictConfig, trainer: pl.Trainer, metrics: dict, data_counts: dict, keys: dict, plain: bool,
               ckpt_path, faults: dict, eval_curve, timings: dict) -> dict:
    """What results.json holds for a run."""
    return {
        "solopo_version": solopo.__version__,
        **where_it_ran(trainer.strategy.root_device),  # libraries, device, device_name: generation's kernels
        "config": redact(OmegaConf.to_container(cfg, resolve=True)),
        "metrics": metrics,
        "data": data_counts,
        "sequences": {**{split: ["/".join(key) for key in split_keys] for split, split_keys in keys.items()},
                      "plain_po": plain},  # plain PO: SoLo-RA not applicable, absent from the metrics
        "steps": trainer.global_step,
        "resumed_from": str(ckpt_path) if ckpt_path else None,  # mid-training: the train/ means cover the steps since
        "faults": faults,
        "eval_curve": eval_curve,
        "timings": timings,
    }


def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    settings = build_settings(cfg)  # a config mistake stops here, in one line, before any model loads
    if (done := completed_results(cfg.ckpt_path, run_dir)) is not None:
        log.info("ckpt_path=last: the run in %s completed and kept no checkpoint; its results.json stands (nothing to "
                 "resume; drop ckpt_path to train it again)", run_dir)
        return done
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the config; no line of its own
    with failed_on_data():  # a malformed data file stops the run here, before any model loads
        splits = load_source(cfg)
    tokenizer, examples, fixed, evaluation, (policy, reference, cached) = load_inputs(cfg, settings, splits)
    refuse_other_weights(cfg.ckpt_path, ckpt_path, policy)
    model_done, stages = time.perf_counter(), StageCosts(compute_device(cfg))

    with stages("sampling"):  # data.pairs=sampled; ready-made and gold pairs were made before the model loaded
        pairs, data_counts = make_pairs(cfg, settings, splits, examples, tokenizer, policy, fixed)
    log.info("data: %s", data_counts)
    if note := repeats_note(len(pairs["train"]), cfg.trainer.max_steps,
                            cfg.data.batch_size * cfg.trainer.accumulate_grad_batches):
        log.warning(note)
    keys, plain = step_sequences(settings, pairs)
    pairs, in_fit = cached_reference(cfg, settings, policy, tokenizer, pairs, keys, stages) if cached else (pairs, ())
    tables: dict[str, dict] = {}
    if evaluation is not None:
        policy.to(compute_device(cfg))
        with stages("base_eval"):
            tables["base"] = evaluation(policy, "base", as_loaded=True)
    data_done = time.perf_counter()

    loaders = {split: make_loader(cfg, pairs[split], keys[split], tokenizer.pad_token_id, shuffle=split == "train",
                                  kernel=settings.model.attn_implementation, context_parallel=settings.context.size)
               if pairs[split] else None for split in ("train", "val")}
    if settings.model.gradient_checkpointing == AUTO and loaders["train"] is not None:
        plan_checkpointing(cfg, settings, policy, pairs["train"], loaders["train"].collate_fn)
    module = SoLoPOModule(policy, settings.algo, settings.ra, settings.method, reference=reference,
                          cached_reference=cached, adapter_reference=bool(settings.model.lora), optim=settings.optim,
                          logp_chunk_size=cfg.logp_chunk_size, plain_po=plain, context=settings.context)
    during, preemption = eval_during_training(evaluation, policy, settings.eval), Preemption()
    with preemption.watching():  # SIGTERM, SIGUSR1 and Ctrl-C, from the fit until results.json is written
        with stages("training"):
            trainer, throughput, guard = fit(cfg, settings, run_dir, ckpt_path, module, loaders, preemption,
                                             started=data_done, extra=((during,) if during else ()) + in_fit)
        fit_done = time.perf_counter()
        metrics = final_metrics(trainer.callback_metrics)
        with preemption.after_training(trainer):  # a preempted job has seconds left: it stops at once
            if preemption.stopped is None:
                with stages("eval"):  # validation, the trained model's evaluation and its saving
                    metrics = after_fit(cfg, trainer, module, policy, tokenizer, loaders["val"], evaluation, tables,
                                        run_dir, metrics, during)
        done = time.perf_counter()
        timings = {"model_s": model_done - started, "data_s": data_done - model_done, "fit_s": fit_done - data_done,
                   "validate_s": done - fit_done, "total_s": done - started, "train_tokens": throughput.tokens,
                   "train_tokens_per_s": throughput.tokens_per_s, "stages": stages.record}  # tokens: real ones
        timings = with_earlier_fits(timings, throughput.earlier_fit_s)  # tokens: the counter holds the earlier ones
        results = with_recorded_training(run_record(cfg, trainer, metrics, data_counts, keys, plain, ckpt_path,
                                                    guard.summary(), during.record() if during else None, timings),
                                         run_dir, ckpt_path)
        return finish_run(trainer, run_dir, results, evaluation, tables, preemption, guard)


