"""Fewer, fused kernels for the decoder layers; both opt-in, both exact within rounding.

``model.liger=true``: Liger-kernel's Triton kernels for RMSNorm, rotary embeddings and the SwiGLU MLP, for Llama and
Qwen2 models. Its cross-entropy kernels stay off: solopo computes response-only log-probs itself
(solopo.step.logps). Liger patches the model's blocks in place and transformers' rotary function for the whole
process (every later model of that family in the process uses it too).

``model.compile=true``: regional compilation. torch.compile of every block of each decoder layer (attention, MLP,
norms) rather than of the whole model: the layers share one compiled code per block kind, so compiling costs what
one layer costs, whatever the depth, and the checkpointing around each layer stays outside the compiled code.
Inductor's comprehensive padding is off for these blocks (``COMPILE_OPTIONS``): on torch 2.11 with CUDA it planned
padded strides for a (B, heads, L, L) attention buffer of an odd length L (206: 42436 -> 42464 values, 128-byte
aligned), the kernel producing it in backward returned contiguous ones, and the step failed inductor's stride check
("expected size 4==4, stride 169744==169856"). That padding only aligns odd strides for pointwise kernels; matrix
products keep inductor's own shape padding.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

from solopo.models.blocks import decoder_layers
from solopo.settings.fields import Problems

# torch.compile's inductor options for the layers' blocks: comprehensive_padding off, as the module docstring says why.
COMPILE_OPTIONS = {"comprehensive_padding": False}
LIGER_PATCHES = {"llama": "apply_liger_kernel_to_llama", "qwen2": "apply_liger_kernel_to_qwen2"}


def liger_problems(gpu_visible: bool) -> Problems:
    """What this machine lacks for model.liger=true; checked before any model loads."""
    if not gpu_visible:
        return ["model.liger=true needs a CUDA GPU (Liger's kernels are Triton kernels); set model.liger=false here"]
    if importlib.util.find_spec("liger_kernel") is None:
        return ["model.liger=true needs the liger-kernel package: pip install liger-kernel (or solopo's gpu extra)"]
    return []


def liger_model_problems(model_type: str) -> Problems:
    if model_type in LIGER_PATCHES:
        return []
    return [f"liger=true: Liger's kernels are applied to {' and '.join(LIGER_PATCHES)} models, not {model_type}"]


def use_liger(model: nn.Module) -> None:
    """Liger's RMSNorm, RoPE and SwiGLU in ``model`` (a Llama or Qwen2 model already loaded)."""
    problems = liger_problems(gpu_visible=torch.cuda.is_available()) + liger_model_problems(model.config.model_type)
    if problems:
        raise ValueError("; ".join(problems))
    import liger_kernel.transformers as liger

    apply = getattr(liger, LIGER_PATCHES[model.config.model_type])
    apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)


def compile_layers(model: nn.Module) -> None:
    """torch.compile, in place, of each block of every decoder layer (regional compilation), with COMPILE_OPTIONS."""
    for layer in decoder_layers(model):
        for block in layer.children():
            block.compile(options=COMPILE_OPTIONS)
