"""Fewer, fused kernels for the decoder layers, each exact within rounding: Liger's where they run (the default),
regional compilation on request.

``model.liger``: Liger-kernel's Triton kernels for RMSNorm, rotary embeddings and the SwiGLU MLP, for Llama and Qwen2
models. Its cross-entropy kernels stay off: solopo computes response-only log-probs itself (solopo.step.logps). Liger
patches the model's blocks in place and transformers' rotary function for the whole process (every later model of
that family in the process uses it too). ``auto`` (the default) turns them on where they run: a CUDA GPU, liger-kernel
importable, a Llama or Qwen2 model; elsewhere it leaves them off without a word of error (``auto_liger`` says why, and
the run logs it). ``true`` insists and is refused where they cannot run, before the model loads; ``false`` is off.
Measured on one H100 (experiments/efficiency/run_kernels.sh, SoLoPO DPO step, 1.5B shape, short 1K, padded rows, 28
layers checkpointed), plain SDPA / Liger: 8K 0.387 / 0.308 s, 16K 0.726 / 0.593 s, 32K 1.70 / 1.43 s, 16-20% less,
with nothing to compile.

``model.compile=true``: regional compilation. torch.compile of every block of each decoder layer (attention, MLP,
norms) rather than of the whole model: the layers share one compiled code per block kind, so compiling costs what
one layer costs, whatever the depth, and the checkpointing around each layer stays outside the compiled code.
Inductor's comprehensive padding is off for these blocks (``COMPILE_OPTIONS``): on torch 2.11 with CUDA it planned
padded strides for a (B, heads, L, L) attention buffer of an odd length L (206: 42436 -> 42464 values, 128-byte
aligned), the kernel producing it in backward returned contiguous ones, and the step failed inductor's stride check
("expected size 4==4, stride 169744==169856"). That padding only aligns odd strides for pointwise kernels; matrix
products keep inductor's own shape padding. It stays opt-in: at 8K-32K it gained what Liger gains (0.295, 0.590 and
1.46 s against Liger's above), but each new shape compiles again, which a short run does not earn back, and Liger and
compilation together were not measured.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

import torch
from torch import nn

from solopo.models.blocks import decoder_layers, mlps
from solopo.settings.fields import Problems

log = logging.getLogger(__name__)

# torch.compile's inductor options for the layers' blocks: comprehensive_padding off, as the module docstring says why.
COMPILE_OPTIONS = {"comprehensive_padding": False}
LIGER_PATCHES = {"llama": "apply_liger_kernel_to_llama", "qwen2": "apply_liger_kernel_to_qwen2"}
AUTO = "auto"
LIGER_CHOICES = (False, True, AUTO)  # model.liger


@dataclass(frozen=True)
class LigerChoice:
    """What model.liger=auto chose for one model on this machine, and why."""

    on: bool
    reason: str

    def describe(self) -> str:
        """One line for the run's log."""
        return f"model.liger=auto: {'on' if self.on else 'off'} ({self.reason})"


def liger_import_problem() -> Optional[str]:
    """Why Liger's patches for transformers cannot be imported here, or None where they can (this imports them, and
    Triton with them)."""
    try:
        importlib.import_module("liger_kernel.transformers")
    except ImportError as err:
        if (err.name or "").split(".")[0] == "liger_kernel":
            return "liger-kernel is not installed"
        return f"liger-kernel does not import: {err}"
    return None


def auto_liger(model_type: str, gpu_visible: bool) -> LigerChoice:
    """model.liger=auto for a model of ``model_type`` (its config.model_type): on where Liger's kernels run (a CUDA
    GPU, as they are Triton kernels; a family LIGER_PATCHES names; liger-kernel importable), off otherwise."""
    if not gpu_visible:
        return LigerChoice(False, "no CUDA GPU: Liger's kernels are Triton kernels")
    if model_type not in LIGER_PATCHES:
        return LigerChoice(False, f"Liger patches {' and '.join(LIGER_PATCHES)} models, not {model_type}")
    if (problem := liger_import_problem()) is not None:
        return LigerChoice(False, problem)
    try:
        version = f"liger-kernel {metadata.version('liger-kernel')}"
    except metadata.PackageNotFoundError:  # importable without an installed distribution (a folder on PYTHONPATH)
        version = "liger-kernel"
    return LigerChoice(True, f"CUDA, {version}, {model_type}")


def liger_on(setting: bool | str, model_type: str) -> bool:
    """Whether a model of ``model_type`` gets Liger's kernels under ``setting`` (one of LIGER_CHOICES) here: true and
    false as set, auto as auto_liger decides."""
    if setting == AUTO:
        return auto_liger(model_type, torch.cuda.is_available()).on
    return setting


def log_liger_choice(setting: bool | str, model_type: str) -> None:
    """The log line saying what model.liger=auto chose (none for true or false). The entry points call it once per run,
    for the policy: a live reference is the same model and gets the same choice."""
    if setting == AUTO:
        log.info(auto_liger(model_type, torch.cuda.is_available()).describe())


def liger_problems(gpu_visible: bool) -> Problems:
    """What this machine lacks for model.liger=true; checked before any model loads."""
    if not gpu_visible:
        return ["model.liger=true needs a CUDA GPU (Liger's kernels are Triton kernels); set model.liger=false or auto "
                "here"]
    if (problem := liger_import_problem()) is not None:
        return [f"model.liger=true: {problem}; pip install liger-kernel (or solopo's gpu extra), or set "
                "model.liger=auto"]
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
    for mlp in mlps(model):
        mlp.solopo_liger = True  # read by liger_applied


def liger_applied(model: nn.Module) -> bool:
    """Whether use_liger patched ``model`` (through any wrapper, e.g. LoRA's): the memory predictor
    (solopo.step.checkpointing) counts what Liger's kernels save for backward instead of what PyTorch's do."""
    return any(getattr(mlp, "solopo_liger", False) for mlp in mlps(model))


def compile_problems(gpu_visible: bool) -> Problems:
    """What this machine lacks for model.compile=true; checked before any model loads. On the CPU inductor builds C++
    kernels, so it needs the C++ compiler torch's own search finds (``CXX``, else g++): without one the first step
    would stop in a traceback, after sampling and the reference pass."""
    if gpu_visible:
        return []
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        return ["model.compile=true on the CPU needs a C++ compiler (torch.compile builds C++ kernels there) and none "
                "works (CXX, or g++ on the PATH); install one or set model.compile=false"]
    return []


def compile_layers(model: nn.Module) -> None:
    """torch.compile, in place, of each block of every decoder layer (regional compilation), with COMPILE_OPTIONS."""
    for layer in decoder_layers(model):
        for block in layer.children():
            block.compile(options=COMPILE_OPTIONS)
