"""The numeric precision of a run's passes outside Lightning's loop (reference log-probs, sampling, evaluation).

Lightning runs training's forward under the trainer's precision (bf16 autocast for ``bf16-mixed``). The passes
solopo makes itself run under the same autocast, so they compute the function training optimises: fp32 weights
under ``bf16-mixed`` are sampled and evaluated at bf16 speed and memory, not in fp32.
"""
from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str) -> str:
    """trainer.precision=auto: bf16-mixed on a GPU with bf16, 32-true otherwise."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype matmuls run in under Lightning's ``precision`` ("bf16-mixed", "16-mixed", "bf16", ...); None where
    the weights' own dtype decides (32-true, 64-true)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    return torch.float16 if precision.startswith("16") else None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast on ``device`` as training's forward has it under ``precision``; nothing for full precision."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
