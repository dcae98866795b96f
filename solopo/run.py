"""Train with SoLoPO (or a baseline) from the Hydra config in conf/.

    python -m solopo.run algo=simpo data=qa
    python -m solopo.run -m algo=dpo,simpo,orpo ra.alpha=0,1,3

This is the only module that reads a DictConfig; everything below takes typed arguments.
"""
from __future__ import annotations

import functools
import logging
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from pytorch_lightning.callbacks import TQDMProgressBar
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

import solopo
from solopo.callbacks import Throughput
from solopo.data.collate import PairCollator
from solopo.data.pairs import build_examples
from solopo.data.tokenize import tokenize_examples
from solopo.models import ModelSpec, freeze, load_model, load_tokenizer
from solopo.module import ALL_SEQUENCES, OptimSettings, SoLoPOModule
from solopo.objective import Method, required_sequences
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


def make_loaders(cfg: DictConfig, tokenizer, spec: ModelSpec, keys) -> tuple[DataLoader, DataLoader, dict]:
    splits = instantiate(cfg.data.source)
    count_tokens = functools.lru_cache(maxsize=None)(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    loaders, counts = [], {}
    for split, items, needed, shuffle in (("train", splits.train, keys, True), ("val", splits.val, ALL_SEQUENCES, False)):
        examples = build_examples(items, cfg.data.long_len, count_tokens, pairs=cfg.data.pairs, seed=cfg.seed,
                                  pool=splits.distractors)
        pairs, skipped = tokenize_examples(examples, tokenizer, spec.max_length, cfg.data.overlong)
        if not pairs:
            raise ValueError(f"no {split} pairs left after skipping {dict(skipped)}")
        counts[split] = {"pairs": len(pairs), "skipped": dict(skipped),
                         "mean_tokens": {c: sum(len(p.prompts[c]) for p in pairs) / len(pairs) for c in ("short", "long")}}
        loaders.append(DataLoader(pairs, batch_size=cfg.data.batch_size, shuffle=shuffle, num_workers=cfg.data.num_workers,
                                  collate_fn=PairCollator(needed, tokenizer.pad_token_id)))
    return loaders[0], loaders[1], counts


def make_trainer(cfg: DictConfig, run_dir: Path, throughput: Throughput) -> pl.Trainer:
    check_accelerator(cfg.trainer.accelerator)
    logger = False
    if cfg.get("logger") and "_target_" in cfg.logger:
        choices = HydraConfig.get().runtime.choices
        tags = [f"{group}={choices[group]}" for group in ("algo", "ra", "method", "data", "model") if group in choices]
        extra = {"tags": tags} if "wandb" in cfg.logger._target_ else {}
        logger = instantiate(cfg.logger, **extra)
        if hasattr(logger, "log_hyperparams"):
            logger.log_hyperparams(redact(OmegaConf.to_container(cfg, resolve=True)))
    overrides = {"precision": resolve_precision(cfg.trainer.precision), "default_root_dir": str(run_dir)}
    if cfg.val_every_n_steps:
        overrides.update(val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None)
    # tqdm bars, which also read well in non-interactive logs (SLURM, CI)
    callbacks = [throughput, TQDMProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else [throughput]
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)


def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    algo = instantiate(cfg.algo)
    ra = instantiate(cfg.ra)
    method = Method(**cfg.method)
    spec = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    keys = required_sequences(method, ra)
    log.info("method %s, %s, SoLo-RA alpha=%s on %s; sequences per pair: %s", method.name, type(algo).__name__,
             ra.alpha if method.use_ra else 0, ",".join(ra.responses), ", ".join("/".join(k) for k in keys))

    tokenizer = load_tokenizer(spec)
    train_loader, val_loader, data_counts = make_loaders(cfg, tokenizer, spec, keys)
    log.info("data: %s", data_counts)
    data_done = time.perf_counter()

    policy = load_model(spec, tokenizer, seed=cfg.seed)
    reference = freeze(load_model(spec, tokenizer, seed=cfg.seed)) if algo.needs_reference else None
    log.info("model %s: %.1fM parameters%s", spec.name, sum(p.numel() for p in policy.parameters()) / 1e6,
             ", with a frozen reference" if reference is not None else "")
    model_done = time.perf_counter()

    module = SoLoPOModule(policy, algo, ra, method, reference=reference,
                          optim=OptimSettings(**OmegaConf.to_container(cfg.optim)), logp_chunk_size=cfg.logp_chunk_size)
    throughput = Throughput()
    trainer = make_trainer(cfg, run_dir, throughput)
    # Without val_every_n_steps, validation runs once, after training (trainer.validate below).
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader if cfg.val_every_n_steps else None)
    fit_done = time.perf_counter()
    metrics = final_metrics(trainer.callback_metrics)
    trainer.validate(module, dataloaders=val_loader, verbose=False)
    metrics.update(final_metrics(trainer.callback_metrics))
    done = time.perf_counter()

    results = {
        "solopo_version": solopo.__version__,
        "config": redact(OmegaConf.to_container(cfg, resolve=True)),
        "metrics": metrics,
        "data": data_counts,
        "steps": trainer.global_step,
        "device": str(module.device),
        "timings": {"data_s": data_done - started, "model_s": model_done - data_done, "fit_s": fit_done - model_done,
                    "validate_s": done - fit_done, "total_s": done - started,
                    "train_tokens_per_s": throughput.tokens / max(throughput.seconds, 1e-9)},
    }
    path = write_results(run_dir, results)
    if not all_finite(metrics):
        log.warning("some final metrics are not finite: %s", {k: v for k, v in metrics.items() if v != v or abs(v) == float("inf")})
    print(summary(results, path))
    return results


def summary(results: dict, path: Path) -> str:
    m, t = results["metrics"], results["timings"]
    keys = ["train/loss", "train/po_loss", "train/ra_loss", "train/rewards/accuracy", "val/loss",
            "val/rewards/accuracy", "val/rewards/margin", "val/ra/gap"]
    lines = [f"trained {results['steps']} steps on {results['data']['train']['pairs']} pairs ({results['device']}) "
             f"in {t['fit_s']:.1f}s, {t['train_tokens_per_s']:.0f} tokens/s"]
    lines += [f"  {k:<24} {m[k]:.4f}" for k in keys if k in m]
    lines.append(f"results: {path}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
