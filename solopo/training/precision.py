"""The numeric precision of a run's passes outside Lightning's loop (reference log-probs, sampling, evaluation).

Lightning runs training's forward under the trainer's precision (bf16 autocast for ``bf16-mixed``). The passes
solopo makes itself run under the same autocast, so they compute the function training optimises: fp32 weights
under ``bf16-mixed`` are sampled and evaluated in bf16 matmuls, not in fp32. Sharding strategies go further and
compute with bf16 copies of the weights (FSDP2's param_dtype, DeepSpeed's bf16 mode), which keeps the residual
stream in bf16 too; the reference pass, whose numbers the first step compares with the policy's, does the same.
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


# Strategies whose forward computes with bf16 copies of the weights under the bf16 precisions: FSDP2 gathers them so
# (MixedPrecisionPolicy.param_dtype), DeepSpeed's bf16 mode holds the module so (its optimizer keeps fp32 masters).
BF16_WEIGHT_STRATEGIES = ("FSDP2Strategy", "DeepSpeedStrategy")


def fsdp_param_dtype(precision: str) -> torch.dtype | None:
    """The dtype FSDP2 gathers the weights in and computes with (MixedPrecisionPolicy.param_dtype): bf16 under the
    bf16 precisions; None keeps the model's own."""
    return torch.bfloat16 if precision.startswith("bf16") else None


def weights_dtype(strategy: str, precision: str) -> torch.dtype | None:
    """The dtype training's forward sees the weights in where the strategy (its class path) casts them; None: the
    model's own weights, under autocast."""
    return fsdp_param_dtype(precision) if strategy.rsplit(".", 1)[-1] in BF16_WEIGHT_STRATEGIES else None


@contextlib.contextmanager
def weights_as(model: torch.nn.Module, dtype: torch.dtype | None):
    """The model's floating-point parameters as ``dtype`` copies for the duration, the originals back afterwards (the
    fp32 masters are not rounded); buffers such as rotary frequencies keep theirs, as FSDP2 leaves them. Costs a copy
    of the weights in ``dtype`` while it lasts."""
    kept = []
    if dtype is not None:
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                kept.append((param, param.data))
                param.data = param.data.to(dtype)
    try:
        yield model
    finally:
        for param, data in kept:
            param.data = data
