"""The settings a checkpoint was trained under, so that a run resumed with other ones is refused.

`ckpt_path=last` resumes a run in its directory. Resumed with another algorithm, alpha, learning rate or dataset, it
went on without a word: results.json then reported the new settings for a model trained partly under the old ones,
and metrics.csv mixed two losses. Each checkpoint now holds the settings that decide what is trained (the algo,
method, ra, optim, data and model groups, the seed and the reference), and a resumed run whose settings differ stops
in one line naming the keys, before any model loads.

What may change on resume is what leaves the training's numbers as they are: how long it runs (trainer.max_steps),
logging, evaluation, checkpointing, and the speed and memory options listed in MAY_CHANGE. Checkpoints written
before the record existed are resumed as before.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from solopo.settings.keys import flatten
from solopo.settings.fields import ConfigError
from solopo.training.resume import read_checkpoint

KEY = "solopo_settings"  # the checkpoint's entry
TRAINED = ("algo", "method", "ra", "optim", "data", "model", "seed", "reference", "trainer.accumulate_grad_batches")
MAY_CHANGE = (  # speed, memory and loading options: the same numbers either way (each is exact where it is chosen)
    "model.gradient_checkpointing", "model.liger", "model.compile", "model.mlp_chunk_size",
    "model.offload_activations", "model.attn_implementation", "model.init_device", "model.decode_kv_heads",
    "data.num_workers", "data.sampling.batch_size", "data.sampling.batch_tokens", "data.sampling.static_cache",
    "data.sampling.half_weights", "data.sampling.engine")


def trained_settings(cfg: DictConfig) -> dict[str, str]:
    """The run's settings that decide what it trains, flat (``"ra.alpha": "1.0"``), each value as JSON text."""
    values = {}
    for key in TRAINED:
        value = OmegaConf.select(cfg, key, default=None)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        values.update(flatten(value, f"{key}.") if isinstance(value, dict) else {key: value})
    return {key: json.dumps(value) for key, value in values.items() if key not in MAY_CHANGE}


class SettingsInCheckpoint(pl.Callback):
    """Writes ``settings`` (trained_settings) into every checkpoint the run saves."""

    def __init__(self, settings: dict[str, str]):
        self.settings = settings

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[KEY] = dict(self.settings)


def settings_problem(path: Path, settings: dict[str, str]) -> Optional[str]:
    """How the settings the checkpoint at ``path`` was trained under differ from ``settings``, or None (the same, or a
    checkpoint with no record: a sharded folder, or one written before the record existed)."""
    if path.is_dir():
        return None
    saved = read_checkpoint(path).get(KEY)
    if not isinstance(saved, dict):
        return None
    differ = sorted(key for key in saved.keys() | settings.keys() if saved.get(key) != settings.get(key))
    if not differ:
        return None
    first = differ[0]
    more = f" (and {len(differ) - 1} more: {', '.join(differ[1:4])}{', ...' if len(differ) > 4 else ''})" \
        if len(differ) > 1 else ""
    return (f"was written by a run with other settings: {first} is {saved.get(first, 'unset')} there and "
            f"{settings.get(first, 'unset')} here{more}; resume with the settings of the run that wrote it, or train "
            "anew in another hydra.run.dir")


def refuse_other_settings(given: str, path: Optional[Path], settings: dict[str, str]) -> None:
    """Stops the run in one line naming ckpt_path (as ``given``) where the checkpoint at ``path`` was trained under
    other settings (settings_problem)."""
    if path is not None and (problem := settings_problem(path, settings)):
        raise ConfigError(f"ckpt_path={given}: {path} {problem}")
