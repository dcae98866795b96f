"""Experiment loggers that need more than their Lightning class."""
from __future__ import annotations

import netrc
import os
from typing import Optional


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(project: str, save_dir: str, mode: str = "auto", name: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list[str]] = None, **kwargs):
    """A WandbLogger; mode "auto" runs online only when an API key is configured, so a run
    never stops to ask for a login and offline runs can be uploaded later with `wandb sync`."""
    from pytorch_lightning.loggers import WandbLogger

    if mode not in ("auto", "online", "offline"):
        raise ValueError(f"logger.mode={mode!r}; choose auto, online or offline")
    offline = mode == "offline" or (mode == "auto" and not wandb_key_configured())
    return WandbLogger(project=project, save_dir=save_dir, offline=offline, name=name, group=group, tags=tags, **kwargs)
