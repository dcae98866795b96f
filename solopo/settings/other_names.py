"""solopo's keys under the names TRL's trainers and Hugging Face's TrainingArguments give them: a key no config has
that is one of these is answered with solopo's key, where spelling alone would suggest another (``trainer.epochs``:
min_epochs) or nothing (``lr``, ``batch_size``)."""
from __future__ import annotations

import difflib
from typing import Iterable, Optional

OTHER_NAMES = {
    "learning_rate": "optim.lr", "lr": "optim.lr",
    "warmup_ratio": "optim.warmup_ratio", "weight_decay": "optim.weight_decay",
    "num_train_epochs": "trainer.max_epochs", "epochs": "trainer.max_epochs", "max_epochs": "trainer.max_epochs",
    "max_steps": "trainer.max_steps",
    "per_device_train_batch_size": "data.batch_size", "train_batch_size": "data.batch_size",
    "batch_size": "data.batch_size",
    "gradient_accumulation_steps": "trainer.accumulate_grad_batches", "max_grad_norm": "trainer.gradient_clip_val",
    "bf16": "trainer.precision=bf16-mixed", "fp16": "trainer.precision=16-mixed",
    "logging_steps": "trainer.log_every_n_steps", "report_to": "logger=wandb|csv|none", "output_dir": "hydra.run.dir",
    "max_length": "model.max_length", "max_prompt_length": "model.max_length with data.overlong=truncate",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "label_smoothing": "algo=cdpo (its algo.label_smoothing)", "loss_type": "algo=NAME (the options in conf/algo)",
    "lora_r": "model.lora.r", "lora_alpha": "model.lora.lora_alpha",
    # solopo's own keys of the data source, written where a reader of README looks for them (data.n_val: source's)
    "n_val": "data.source.n_val", "n_train": "data.source.n_train",
}
# Names TRL's configs give at their top that solopo keeps in a group, and that spell no other solopo key: answered at
# the top of the config only, since under a group the closest spelling is the better hint (optim.beta: betas)
TOP_LEVEL_NAMES = {
    "beta": "algo.beta (TRL's ORPO beta is algo.lam)", "simpo_gamma": "algo.gamma", "gamma": "algo.gamma",
    "model_name_or_path": "model.name", "dataset_name": "data=pairs data.path=FILE",
    "eval_steps": "val_every_n_steps", "save_steps": "checkpoint.every_n_steps",
    "precompute_ref_log_probs": "reference=cached", "use_peft": "model.lora='{r: 16, lora_alpha: 32}'",
}


def other_name(key: str) -> Optional[str]:
    """solopo's key for ``key`` (its last part) as TRL or Hugging Face name it, or None; never ``key`` itself."""
    found = TOP_LEVEL_NAMES.get(key) or OTHER_NAMES.get(key.rsplit(".", 1)[-1])
    return None if found is None or found == key else found


def suggestion(key: str, known: Iterable[str], others: bool = True) -> Optional[str]:
    """The hint for an unknown ``key`` (dotted): solopo's key under TRL's or Hugging Face's name (``others``), else the
    entry of ``known`` spelt closest to its last part."""
    return (others and other_name(key)) or next(iter(difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known),
                                                                                 n=1)), None)
