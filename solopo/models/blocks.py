"""Where the parts of a decoder model are that solopo's kernel and memory options act on, for any Hugging Face
decoder: its layers (transformers' GradientCheckpointingLayer, the unit gradient checkpointing recomputes), each
layer's MLP and the final norm."""
from __future__ import annotations

from typing import Optional

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks, in order (transformers' GradientCheckpointingLayer), through any wrapper (LoRA)."""
    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def mlps(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's position-wise MLP (``layer.mlp``, as Llama, Qwen2, Mistral and Gemma name it)."""
    return [layer.mlp for layer in decoder_layers(model) if isinstance(getattr(layer, "mlp", None), nn.Module)]


# the final norm's name in the decoder: Llama, Qwen2, Mistral, Gemma; GPT-2; Phi; OPT
FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def final_norm(model: nn.Module) -> Optional[nn.Module]:
    """The norm after the last decoder layer (a FINAL_NORMS child of the decoder), or None where the model names it
    otherwise."""
    decoder = model.get_decoder()
    norms = (getattr(decoder, name, None) for name in FINAL_NORMS)
    return next((norm for norm in norms if isinstance(norm, nn.Module)), None)
