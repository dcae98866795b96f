"""Train with SoLoPO (or a baseline) from the Hydra config in conf/.

    python -m solopo.run algo=simpo data=qa
    python -m solopo.run -m algo=dpo,simpo,orpo ra.alpha=0,1,3

This is the only module that reads a DictConfig; everything below takes typed arguments.
"""
from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.callbacks import TQDMProgressBar
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

import solopo
from solopo.callbacks import Preemption, Throughput
from solopo.data.collate import PairCollator
from solopo.data.pairs import to_examples
from solopo.data.sampling import SamplingSettings, sample_pairs
from solopo.data.schema import PreferenceExample
from solopo.data.tokenize import token_counter, tokenize_examples
from solopo.embedded import cache_root
from solopo.eval.runner import Evaluation, eval_items, log_to, write_outputs
from solopo.evaluate import eval_settings
from solopo.faults import NumericalGuard
from solopo.models import ModelSpec, freeze, load_model, load_tokenizer
from solopo.module import ALL_SEQUENCES, OptimSettings, SoLoPOModule
from solopo.objective import Method, required_sequences
from solopo.reference import with_reference_logps
from solopo.resume import LastCheckpoint, ResumableLoader, RngState, resolve_ckpt_path
from solopo.results import all_finite, final_metrics, redact, write_results

log = logging.getLogger("solopo")
warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def check_accelerator(accelerator: str) -> None:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SystemExit("trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=default (GPU when present) or trainer=cpu")


def check_data_path(cfg: DictConfig) -> None:
    """A data option that reads a file (mandatory data.path) but was given none stops here, in one line,
    before any model loads; omegaconf would only fail later, with a stack trace."""
    if OmegaConf.is_missing(cfg.data, "path"):
        option = HydraConfig.get().runtime.choices["data"]
        raise SystemExit(f"data={option} needs data.path=FILE (see conf/data/{option}.yaml)")


def model_identity(spec: ModelSpec, seed: int) -> str:
    """What cached numbers computed with this model depend on (a random model is defined by its seed)."""
    return json.dumps([spec.name, spec.random_init, seed if spec.random_init else None, spec.dtype])


def compute_device(cfg: DictConfig) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")


def make_evaluation(cfg: DictConfig, splits, tokenizer, spec: ModelSpec) -> Evaluation | None:
    """The held-out evaluation of this run (conf/eval), or None when it is off or the data has no questions."""
    if not cfg.eval.enabled:
        return None
    try:
        items, pool = eval_items(splits, cfg.eval.n_items)
    except ValueError as err:
        log.warning("evaluation skipped: %s", err)
        return None
    return Evaluation(tokenizer, items, pool, eval_settings(cfg), spec.max_length, cache_root() / "eval",
                      model_identity(spec, cfg.seed))


def make_pairs(cfg: DictConfig, splits, tokenizer, spec: ModelSpec, policy, method: Method) -> tuple[dict[str, list], dict]:
    """Tokenised preference pairs per split (sampled on-policy when data.pairs=sampled), and what was
    built, sampled or skipped."""
    count_tokens = token_counter(tokenizer)
    sampling = SamplingSettings(**cfg.data.get("sampling", {}))
    pairs, counts = {}, {}
    # Each split's long contexts draw on its own passages where the source keeps them apart (built-in QA).
    for split, items, pool in (("train", splits.train, splits.distractors),
                               ("val", splits.val, splits.val_distractors or splits.distractors)):
        examples = to_examples(items, cfg.data.long_len, count_tokens, pairs=cfg.data.pairs, seed=cfg.seed,
                               pool=pool, template=cfg.data.get("template", "direct"))
        counts[split] = {}
        if cfg.data.pairs == "sampled" and not isinstance(items[0], PreferenceExample):
            policy.to(compute_device(cfg))
            examples, counts[split]["sampling"] = sample_pairs(
                examples, policy, tokenizer, sampling, method.pairs_from, model_identity(spec, cfg.seed),
                cache_dir=cache_root() / "pairs")
        pairs[split], skipped = tokenize_examples(examples, tokenizer, spec.max_length, cfg.data.overlong)
        if not pairs[split]:
            raise ValueError(f"no {split} pairs left ({counts[split]}; skipped {dict(skipped)})")
        counts[split].update({"pairs": len(pairs[split]), "skipped": dict(skipped),
                              "mean_tokens": {c: sum(len(p.prompts[c]) for p in pairs[split]) / len(pairs[split])
                                              for c in ("short", "long")}})
    return pairs, counts


def make_loader(cfg: DictConfig, pairs: list, keys, pad_token_id: int, shuffle: bool) -> DataLoader:
    options = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                   collate_fn=PairCollator(keys, pad_token_id, pack=cfg.packing))
    # The training loader's order and position go into checkpoints, so a resumed run sees the batches it would have.
    # Both loaders draw from their own generator: the global RNG, which checkpoints restore, is left to the model.
    if shuffle:
        return ResumableLoader(pairs, seed=cfg.seed, **options)
    return DataLoader(pairs, generator=torch.Generator().manual_seed(cfg.seed), **options)


def make_logger(cfg: DictConfig, resume: bool):
    if not (cfg.get("logger") and "_target_" in cfg.logger):
        return False
    extra = {}
    if "wandb" in cfg.logger._target_:
        choices = HydraConfig.get().runtime.choices
        tags = [f"{group}={choices[group]}" for group in ("algo", "ra", "method", "data", "model") if group in choices]
        extra = {"tags": tags, "resume": resume}
    elif cfg.logger._target_ == "pytorch_lightning.loggers.CSVLogger":  # one metrics.csv per run, continued on resume
        extra = {"_target_": "solopo.loggers.ResumableCSVLogger", "resume": resume}
    logger = instantiate(cfg.logger, **extra)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(redact(OmegaConf.to_container(cfg, resolve=True)))
    return logger


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, resume: bool) -> pl.Trainer:
    check_accelerator(cfg.trainer.accelerator)
    overrides = {"precision": resolve_precision(cfg.trainer.precision), "default_root_dir": str(run_dir)}
    if cfg.val_every_n_steps:
        overrides.update(val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None)
    if cfg.trainer.enable_checkpointing:
        if cfg.checkpoint.every_n_steps and cfg.checkpoint.every_n_minutes:
            raise SystemExit("set checkpoint.every_n_steps or checkpoint.every_n_minutes, not both")
        callbacks = [*callbacks, LastCheckpoint(run_dir, **cfg.checkpoint)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks = [*callbacks, TQDMProgressBar()]  # tqdm bars, which also read well in non-interactive logs (SLURM, CI)
    return instantiate(cfg.trainer, logger=make_logger(cfg, resume), callbacks=callbacks, **overrides)


def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_data_path(cfg)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    algo = instantiate(cfg.algo)
    ra = instantiate(cfg.ra)
    method = Method(**cfg.method)
    spec = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    train_keys = required_sequences(method, ra)
    log.info("method %s, %s, SoLo-RA alpha=%s on %s; sequences per pair: %s", method.name, type(algo).__name__,
             ra.alpha if method.use_ra else 0, ",".join(ra.responses), ", ".join("/".join(k) for k in train_keys))

    tokenizer = load_tokenizer(spec)
    precision = resolve_precision(cfg.trainer.precision)
    cached = algo.needs_reference and cfg.reference == "cached"
    policy = load_model(spec, tokenizer, seed=cfg.seed)
    reference = freeze(load_model(spec, tokenizer, seed=cfg.seed)) if algo.needs_reference and not cached else None
    log.info("model %s: %.1fM parameters; reference: %s", spec.name, sum(p.numel() for p in policy.parameters()) / 1e6,
             "precomputed log-probs" if cached else "frozen model" if reference is not None else "none")
    model_done = time.perf_counter()

    splits = instantiate(cfg.data.source)
    pairs, data_counts = make_pairs(cfg, splits, tokenizer, spec, policy, method)
    log.info("data: %s", data_counts)
    keys = {"train": train_keys, "val": ALL_SEQUENCES}
    if cached:  # before the first update, the policy is the reference
        policy.to(compute_device(cfg))
        pairs = {split: with_reference_logps(
            policy, split_pairs, keys[split], model_identity(spec, cfg.seed), precision, tokenizer.pad_token_id,
            cache_root() / "reference", batch_size=cfg.data.batch_size, chunk_size=cfg.logp_chunk_size,
            pack=cfg.packing, desc=f"reference log-probs ({split})") for split, split_pairs in pairs.items()}
    evaluation, tables = make_evaluation(cfg, splits, tokenizer, spec), {}
    if evaluation is not None:
        policy.to(compute_device(cfg))
        tables["base"] = evaluation(policy, "base", as_loaded=True)
    data_done = time.perf_counter()

    module = SoLoPOModule(policy, algo, ra, method, reference=reference, cached_reference=cached,
                          optim=OptimSettings(**OmegaConf.to_container(cfg.optim)), logp_chunk_size=cfg.logp_chunk_size)
    train_loader = make_loader(cfg, pairs["train"], train_keys, tokenizer.pad_token_id, shuffle=True)
    val_loader = make_loader(cfg, pairs["val"], ALL_SEQUENCES, tokenizer.pad_token_id, shuffle=False)
    throughput, guard, preemption = Throughput(), NumericalGuard(cfg.faults.max_consecutive_bad_steps), Preemption()
    trainer = make_trainer(cfg, run_dir, [throughput, guard, preemption, RngState()], resume=ckpt_path is not None)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    # Without val_every_n_steps, validation runs once, after training (trainer.validate below).
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader if cfg.val_every_n_steps else None,
                ckpt_path=ckpt_path)
    fit_done = time.perf_counter()
    metrics = final_metrics(trainer.callback_metrics)
    if preemption.received is None:  # a preempted job has seconds left: no validation
        trainer.validate(module, dataloaders=val_loader, verbose=False)
        metrics.update(final_metrics(trainer.callback_metrics))
        if evaluation is not None:
            tables["trained"] = evaluation(policy, "trained")
    done = time.perf_counter()

    results = {
        "solopo_version": solopo.__version__,
        "config": redact(OmegaConf.to_container(cfg, resolve=True)),
        "metrics": metrics,
        "data": data_counts,
        "steps": trainer.global_step,
        "device": str(module.device),
        "resumed_from": str(ckpt_path) if ckpt_path else None,  # the train/ means cover the steps since then
        "faults": guard.summary(),
        "timings": {"model_s": model_done - started, "data_s": data_done - model_done, "fit_s": fit_done - data_done,
                    "validate_s": done - fit_done, "total_s": done - started,
                    "train_tokens_per_s": throughput.tokens / max(throughput.seconds, 1e-9)},
    }
    if preemption.received is not None:
        stop_preempted(preemption.received, trainer, run_dir, results)
    if tables:
        outputs = write_outputs(tables, run_dir)
        results.update(eval=tables, plots=outputs["plots"])
        log_to(trainer.logger, tables, outputs["plots"])
        print("long-context QA, sub-EM (%):\n" + outputs["markdown"])
    path = write_results(run_dir, results)
    if not all_finite(metrics):
        log.warning("some final metrics are not finite: %s", {k: v for k, v in metrics.items() if v != v or abs(v) == float("inf")})
    print(summary(results, path))
    if guard.stop_message:
        stop_on_faults(guard.stop_message)
    return results


def stop_preempted(received: signal.Signals, trainer: pl.Trainer, run_dir: Path, results: dict) -> None:
    """Records the preemption in results.json and exits with 128 + the signal number (143 for SIGTERM, 138 for
    SIGUSR1), as a shell reports a process the signal ended, so a job script sees that the run did not finish."""
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    results["preempted"] = {"signal": received.name, "step": trainer.global_step, "checkpoint": checkpoint or None}
    write_results(run_dir, results)
    if checkpoint:
        log.warning("preempted (%s) at step %d: checkpoint written to %s; resume by rerunning the command with "
                    "ckpt_path=last hydra.run.dir=%s",
                    received.name, trainer.global_step, checkpoint, run_dir)
    else:
        log.warning("preempted (%s) at step %d: no checkpoint written (trainer.enable_checkpointing=false)",
                    received.name, trainer.global_step)
    raise SystemExit(128 + received.value)


def stop_on_faults(message: str) -> None:
    """A single run exits with status 1 and the message; a job of a sweep logs it (results.json has it under
    faults.stopped) and lets the sweep go on."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error(message)
    else:
        raise SystemExit(message)


def summary(results: dict, path: Path) -> str:
    m, t = results["metrics"], results["timings"]
    keys = ["train/loss", "train/po_loss", "train/ra_loss", "train/rewards/accuracy", "val/loss",
            "val/rewards/accuracy", "val/rewards/margin", "val/ra/gap"]
    lines = [f"trained {results['steps']} steps on {results['data']['train']['pairs']} pairs ({results['device']}) "
             f"in {t['fit_s']:.1f}s, {t['train_tokens_per_s']:.0f} tokens/s"]
    for split, counts in results["data"].items():
        if "sampling" in counts:
            sampled = counts["sampling"]
            lines.append(f"  {split} pairs sampled on the {sampled['context']} context: {sampled['kept']} of "
                         f"{sampled['items']} questions kept, {100 * sampled['share_correct']:.1f}% of samples correct")
    lines += [f"  {k:<24} {m[k]:.4f}" for k in keys if k in m]
    if results["faults"]["skipped_steps"]:
        lines.append(f"  skipped {results['faults']['skipped_steps']} steps with a non-finite loss or gradient "
                     "(results.json: faults)")
    lines.append(f"results: {path}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
