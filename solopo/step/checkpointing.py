"""`model.gradient_checkpointing=auto`: checkpoint only as many decoder layers as the step's memory needs.

Gradient checkpointing keeps a layer's input instead of the activations its backward reads, and recomputes them in
backward: about a third more compute for that layer. Where the whole step fits without it (the 1.5B shape at 8K
peaks at 12.8 GiB of an H200's 139 with every layer checkpointed), it only costs time. ``predict_peak`` estimates the
step's peak memory from the model's shape, the tokens of the largest step and the dtypes; ``plan_checkpointing``
takes the fewest checkpointed layers whose prediction fits the device's memory; ``checkpoint_layers`` wraps that many
(transformers' switch is all-or-nothing: every layer or none).

Bytes saved for backward per token and decoder layer (Llama/Qwen2 blocks; H hidden, Dq = heads x head_dim,
Dkv = kv_heads x head_dim, I intermediate, c the compute dtype's bytes, n_h the heads), when the weights are in the
compute dtype:

    A = 2 (4H + 2cH + 4)        two RMSNorms: the fp32 upcast of their input, the cast back, the norm's output and
                                the fp32 reciprocal root
      + c (2 Dq + 2 Dkv)        q, k, v after RoPE, and attention's output
      + 4 n_h                   attention's log-sum-exp (fp32, one per head)
      + 4 c I                   gate, up, silu(gate) and their product

and 5cH more with wider weights under autocast (fp32 weights, bf16 compute: the five projections that read a norm's
output each cast their own copy). For Qwen2.5-1.5B (H 1536, Dq 1536, Dkv 256, I 8960, 12 heads) in bf16, A =
103,480 bytes: the bytes autograd holds per token for one layer of that shape on the CPU, counted tensor by tensor
(tests/test_checkpointing.py checks the formula against such a count on a small shape). A checkpointed layer holds
its input only, r H bytes per token (r: the residual stream's dtype, the weights' under autocast). The step's peak
adds, per token, the final norm and the rotary tables, (4 + c) H + 4 head_dim + 8; one layer's activations recomputed
in backward (when any layer is checkpointed) and one layer's worth of activation gradients; the LM head's chunk of
fp32 logits (3 x chunk x vocab x 4 bytes); and the model's state: weights, and for trained weights their gradients
and AdamW's two moments, in the weights' dtype. bench.py records the prediction beside the measured peak.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

log = logging.getLogger("solopo")
AUTO = "auto"
CHOICES = (False, True, AUTO)
MARGIN = 0.10  # of the device's memory kept free: the caching allocator's fragmentation, kernels' workspaces


@dataclass(frozen=True)
class StepShape:
    """What a step's activation memory depends on: the model's shape and dtypes, and the step's tokens."""

    layers: int
    hidden: int
    q_dim: int
    kv_dim: int
    heads: int
    head_dim: int
    ffn: int
    vocab: int
    compute_bytes: int  # 2 under bf16/fp16 autocast or with 16-bit weights, 4 in fp32
    weight_bytes: int

    @classmethod
    def of(cls, config, compute_bytes: int, weight_bytes: int) -> "StepShape":
        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads * head,
                   config.num_key_value_heads * head, config.num_attention_heads, head, config.intermediate_size,
                   config.vocab_size, compute_bytes, weight_bytes)

    def layer_bytes(self) -> int:
        """A: bytes per token that one decoder layer keeps for backward (the module docstring's formula)."""
        c, h = self.compute_bytes, self.hidden
        saved = 2 * (4 * h + 2 * c * h + 4) + c * (2 * self.q_dim + 2 * self.kv_dim) + 4 * self.heads + 4 * c * self.ffn
        return saved + (5 * c * h if self.weight_bytes > c else 0)

    def checkpointed_bytes(self) -> int:
        """Bytes per token a checkpointed layer keeps: its input, in the residual stream's dtype."""
        return max(self.weight_bytes, self.compute_bytes) * self.hidden

    def outside_layers_bytes(self) -> int:
        """Bytes per token outside the decoder layers: the final norm, the rotary tables, the token ids."""
        return (4 + self.compute_bytes) * self.hidden + 4 * self.head_dim + 8


def predict_activations(shape: StepShape, tokens: int, checkpointed: int, head_tokens: int) -> int:
    """Peak bytes of the step's activations with ``checkpointed`` of the layers checkpointed: the layers' saved
    tensors, the rest of the model's, one layer recomputed (if any is checkpointed) and one layer's gradients in
    backward, and the LM head's fp32 logits over ``head_tokens`` (at most a chunk) response positions."""
    per_layer = shape.layer_bytes()
    kept = (shape.layers - checkpointed) * per_layer + checkpointed * shape.checkpointed_bytes()
    backward = per_layer * (2 if checkpointed else 1)
    return tokens * (kept + shape.outside_layers_bytes() + backward) + 3 * head_tokens * shape.vocab * 4


def state_bytes(model: nn.Module, world_size: int = 1) -> int:
    """Weights, and for the trained ones their gradients and AdamW's two moments, in each weight's dtype; a sharded
    strategy (FSDP) holds a ``world_size``-th of them per device."""
    total = sum(p.numel() * p.element_size() * (4 if p.requires_grad else 1) for p in model.parameters())
    return total // world_size


@dataclass(frozen=True)
class Plan:
    """How many of the ``layers`` decoder layers to checkpoint, and the figures it was decided from (bytes)."""

    checkpointed: int
    layers: int
    predicted_peak: int
    budget: Optional[int]  # None: no GPU, no limit taken

    def describe(self) -> str:
        gib = 2**30
        room = "" if self.budget is None else f" of {self.budget / gib:.1f} GiB usable"
        return (f"model.gradient_checkpointing=auto: {self.checkpointed} of {self.layers} decoder layers checkpointed "
                f"(predicted peak {self.predicted_peak / gib:.1f} GiB{room})")


def plan_checkpointing(shape: StepShape, tokens: int, head_tokens: int, state: int, budget: Optional[int]) -> Plan:
    """The fewest checkpointed layers whose predicted peak (``state`` + activations) fits ``budget`` bytes; every layer
    when none fits; none without a budget (the CPU, whose memory is the host's)."""
    def peak(k: int) -> int:
        return state + predict_activations(shape, tokens, k, head_tokens)

    if budget is None:
        return Plan(0, shape.layers, peak(0), None)
    fits = next((k for k in range(shape.layers + 1) if peak(k) <= budget), shape.layers)
    return Plan(fits, shape.layers, peak(fits), budget)


def device_budget(device: torch.device) -> Optional[int]:
    """Bytes the step may use on ``device``: its free memory and what this process's allocator holds already (the
    model may be there), less MARGIN of the total; None on the CPU."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - MARGIN * total)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks, in order (transformers' GradientCheckpointingLayer), through any wrapper (LoRA)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpoint_layers(model: nn.Module, count: int) -> None:
    """Checkpoint the first ``count`` decoder layers and no other (non-reentrant, as model.gradient_checkpointing=true
    does for every layer)."""
    layers = decoder_layers(model)
    if count > 0:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < count


def step_tokens(pairs, keys, batch_size: int) -> tuple[int, int]:
    """Tokens through the model in the largest step of ``pairs`` (objects with ``prompts`` and ``responses`` token
    lists) and their response tokens: each (context, response) sequence of ``keys`` at its longest, ``batch_size``
    times. Padded rows hold that many; packed and shared-prompt rows fewer, so it bounds every layout."""
    longest = {key: max(len(p.prompts[key[0]]) + len(p.responses[key[1]]) for p in pairs) for key in keys}
    responses = {key: max(len(p.responses[key[1]]) for p in pairs) for key in keys}
    return batch_size * sum(longest.values()), batch_size * sum(responses.values())


def auto_checkpointing(model: nn.Module, tokens: int, response_tokens: int, chunk_size: int, device: torch.device,
                       compute_dtype: Optional[torch.dtype], world_size: int = 1) -> Plan:
    """Decides and applies model.gradient_checkpointing=auto for steps of ``tokens`` tokens on ``device``;
    ``compute_dtype`` is the autocast dtype (None: the weights' own), ``world_size`` the devices a sharded strategy
    spreads the model's state over."""
    weight_bytes = next(model.parameters()).element_size()
    compute_bytes = torch.finfo(compute_dtype).bits // 8 if compute_dtype is not None else weight_bytes
    shape = StepShape.of(model.config, compute_bytes, weight_bytes)
    plan = plan_checkpointing(shape, tokens, min(response_tokens, chunk_size), state_bytes(model, world_size),
                              device_budget(device))
    checkpoint_layers(model, plan.checkpointed)
    return plan
