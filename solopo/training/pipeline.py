"""A training run, from its config to results.json: settings, data, pairs, the reference's log-probs, the base
model's evaluation, the fit, the trained model's evaluation and its saving.

solopo.run (the console script solopo-train) calls ``train`` with Hydra's config, and this module orders the stages.
Each stage's work lives with what it makes: the pairs in solopo.training.pairs, the models, the cached reference and
the checkpointing plan in solopo.training.models, the Trainer, the fit and how a run ends in
solopo.training.lightning_run, and what results.json holds in solopo.training.results. This module and the first
three, which it calls with the config, are the only code below the entry points that reads a DictConfig; everything
else takes the typed settings (solopo.settings).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from solopo.cache import DiskCache
from solopo.core.objective import required_sequences
from solopo.data.collate import PairCollator, plain_po
from solopo.data.trained_on import write_record
from solopo.eval import runner
from solopo.eval.runner import RunEvaluation
from solopo.models.loading import load_tokenizer, save_policy
from solopo.records import DataFileError
from solopo.step.checkpointing import AUTO
from solopo.settings.build import ConfigError, Settings, build_settings, load_source, refuse_missing_model, vllm_args
from solopo.settings.rules import check_eval_metric
from solopo.training.callbacks import Preemption, StageCosts
from solopo.training.eval_callback import eval_during_training
from solopo.training.models import (cached_reference, compute_device, generation_identity, load_models,
                                    plan_checkpointing)
from solopo.training.module import ALL_SEQUENCES, SoLoPOModule
from solopo.training.pairs import (check_file_settings, failed_on_data, fixed_pairs, make_examples, make_pairs,
                                   repeats_note)
from solopo.training.precision import autocast_dtype
from solopo.training.results import final_metrics, run_record, run_timings, with_recorded_training
from solopo.training.lightning_run import finish_run, fit
from solopo.training.resume import ResumableLoader, completed_results, refuse_other_weights, resolve_ckpt_path
from solopo.training.run_settings import refuse_other_settings, trained_settings

log = logging.getLogger("solopo")


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
        log.warning("evaluation skipped: %s (eval.enabled=false skips it without this warning)", err)
        return None
    except ValueError as err:
        log.warning("evaluation skipped: %s", err)
        return None


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


def after_fit(cfg: DictConfig, trainer: pl.Trainer, module, policy, tokenizer, val_loader, evaluation,
              tables: dict, run_dir: Path, metrics: dict, trained_items: list, during=None) -> dict:
    """The trained model (with eval.keep_best, the best step's weights: ``during``), its final validation, evaluation
    and saving (with the record of ``trained_items``, solopo.data.trained_on); ``metrics`` (the fit's) with the
    validation's."""
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
        if trainer.is_global_zero:  # rank 0 wrote the weights
            write_record(run_dir / "model", trained_items, OmegaConf.to_container(cfg.data.source, resolve=True))
    return metrics


def load_inputs(cfg: DictConfig, settings: Settings, splits):
    """The tokenizer, each split's examples, the pairs that need no sampling (fixed_pairs) and the evaluation (all
    built with the tokenizer alone: an item that cannot make a pair, a pair over model.max_length under
    data.overlong=error, a bad benchmark file or an optimized_metric the evaluation does not give stops the run before
    the model loads) and the models (load_models)."""
    check_file_settings(cfg, settings, splits)
    refuse_missing_model(settings.model)  # a missing local folder or an unknown hub id, in one line
    tokenizer = load_tokenizer(settings.model)
    with failed_on_data():
        examples = make_examples(cfg, splits, tokenizer)
        evaluation = make_evaluation(cfg, settings, splits, tokenizer)
    if problems := check_eval_metric(cfg.get("optimized_metric"), evaluation and evaluation.summary_keys()):
        raise ConfigError(problems[0])
    fixed = fixed_pairs(cfg, settings, splits, examples, tokenizer)
    return tokenizer, examples, fixed, evaluation, load_models(cfg, settings, tokenizer)


def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    settings = build_settings(cfg)  # a config mistake stops here, in one line, before any model loads
    if (done := completed_results(cfg.ckpt_path, run_dir)) is not None:
        log.info("ckpt_path=last: the run in %s completed and kept no checkpoint; its results.json stands (nothing to "
                 "resume; drop ckpt_path to train it again)", run_dir)
        return done
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    refuse_other_settings(cfg.ckpt_path, ckpt_path, trained_settings(cfg))
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
        plan_checkpointing(cfg, settings, policy, pairs["train"], loaders["train"].collate_fn, reference)
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
                                        run_dir, metrics, splits.train, during)
        timings = run_timings(started, model_done, data_done, fit_done, time.perf_counter(), throughput, stages.record)
        results = with_recorded_training(run_record(OmegaConf.to_container(cfg, resolve=True), trainer, metrics,
                                                    data_counts, keys, plain, ckpt_path, guard.summary(),
                                                    during.record() if during else None, timings),
                                         run_dir, ckpt_path)
        return finish_run(trainer, run_dir, results, evaluation, tables, preemption, guard)


