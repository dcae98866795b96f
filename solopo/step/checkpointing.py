"""`model.gradient_checkpointing=auto`: checkpoint only as many decoder layers as the step's memory needs.

Gradient checkpointing keeps a layer's input instead of the activations its backward reads, and recomputes them in
backward: about a third more compute for that layer. Where the whole step fits without it (the 1.5B shape at 8K
peaks at 12.8 GiB of an H200's 139 with every layer checkpointed), it only costs time. ``predict_activations``
estimates the step's peak memory from the model's shape, the tokens of the largest step, the dtypes and the memory
savers; ``plan_checkpointing`` takes the fewest checkpointed layers whose prediction fits the device's memory;
``checkpoint_layers`` wraps that many (transformers' switch is all-or-nothing: every layer or none).

Bytes saved for backward per token and decoder layer (Llama/Qwen2 blocks; H hidden, Dq = heads x head_dim,
Dkv = kv_heads x head_dim, I intermediate, c the compute dtype's bytes, r the residual stream's (the weights' under
autocast), n_h the heads), when the weights are in the compute dtype, with PyTorch's own RMSNorm and MLP:

    A = 2 (4H + 2cH + 4)        two RMSNorms: the fp32 upcast of their input, the cast back, the norm's output and
                                the fp32 reciprocal root
      + c (2 Dq + 2 Dkv)        q, k, v after RoPE, and attention's output
      + 4 n_h                   attention's log-sum-exp (fp32, one per head)
      + 4 c I                   gate, up, silu(gate) and their product

and with Liger's kernels (model.liger, solopo.models.kernels; liger-kernel's ops/rms_norm.py, swiglu.py, rope.py):

    A_liger = 2 (rH + 4 + cH)   two RMSNorms: LigerRMSNormFunction saves its input as it came and the fp32 reciprocal
                                root (casting mode "llama"); the norm's output, which the projections save
      + c (2 Dq + 2 Dkv)        as above: LigerRopeFunction rotates q and k in place and saves only cos and sin
      + 4 n_h
      + 3 c I                   LigerSiLUMulFunction saves gate and up (its backward overwrites them with their
                                gradients), the down projection their product

With wider weights under autocast (fp32 weights, bf16 compute) A adds 5cH (the five projections that read a norm's
output each cast their own copy); A_liger adds 5cH and drops both norms' cH (their fp32 output is saved by none). In
packed rows (one row of every sequence, with or without shared prompts) attention may keep keys and values at every
query head: transformers' flex attention repeats them for a head count that is no power of two (Qwen2.5: 12, 28), and
solopo_varlen where torch's varlen kernel takes no grouped heads; there Dkv counts as Dq (2c (Dq - Dkv) more, 5,120
bytes for the 1.5B shape; the H100 table's packed and shared-prompt cells hold about that much more per token and layer
than its padded ones). Shared-prompt rows run by solopo_varlen gather each prompt's keys and values again for every
response after its first (solopo.step.shared_prompt.varlen_runs), and the kernel keeps the gathered copies: 2c Dkv (Dq
where repeated) more per gathered token and layer (``StepTokens.gathered``; counted for flex attention too, which
gathers nothing: a bound there). For Qwen2.5-1.5B (H 1536, Dq 1536, Dkv 256, I 8960, 12 heads) in bf16, A = 103,480 bytes: the
bytes autograd holds per token for one layer of that shape on the CPU, counted tensor by tensor
(tests/test_checkpointing.py checks the formula against such a count on a small shape); A_liger = 73,272 (Liger's
kernels are Triton kernels: no CPU count, the GPU table is the check). A checkpointed layer holds its input only, r H
bytes per token. Outside the layers the model holds, per token, O = (4 + r) H + 4 (the final norm's fp32 input, its
cast back, its reciprocal root; Liger's: r H + 4) + c H (the norm's output: the LM head runs on the last position
only, and saves that view of the whole; under autocast it saves the view's cast instead, and this term is 0)
+ 2 r head_dim (the rotary tables, cos and sin) + 8 (the token ids).

The memory savers (solopo.models.memory) change these terms for the T_N tokens of the sequences longer than their
chunk of N positions (a row of at most N positions runs whole):

    model.mlp_chunk_size=N      a non-checkpointed layer's MLP keeps its input only, the norm's output A counts
                                already: A_N = A - 4cI (A_liger - 3cI), and with wider weights - 2cH + rH more (the
                                gate and up projections' casts give way to the chunk's input, in the weights' dtype);
                                the final norm keeps its input, r H, in place of its saved tensors. A checkpointed layer
                                is unchanged.
                                While a chunk runs, and while backward recomputes it, N positions of each of the n rows
                                longer than N exist: C = n N max(6cI, 2 ((4 + r) H + 4)), the MLP's four intermediates
                                and two of their gradients, or the norm's saved tensors and their gradients.
    model.offload_activations   what the model's forward saves for backward (each tensor of at least 1 MiB: every
                                activation of a long step) waits in pinned host memory: a checkpointed layer's r H, a
                                non-checkpointed layer's whole activations, the final norm's. The device keeps the
                                rotary tables, which the recomputation reads, and the ids: 2 r head_dim + 8. Backward
                                brings one layer's input back at a time, r H, while it recomputes that layer.

With k of the L layers checkpointed, A_x = A over the T - T_N unchunked tokens and A_N over the T_N chunked ones, and
the final norm's term O_x likewise, the step's activations peak at

    T (k r H + O_x) + max(L - k, [k > 0]) A_x T + A_x T + C + 3 h V 4            (no offload)
    T (2 r head_dim + 8) + A_x T 2 + [k > 0] r H T + C + 3 h V 4                 (offload)

the checkpointed layers' inputs and what the model keeps outside the layers; the non-checkpointed layers'
activations or one checkpointed layer recomputed, whichever is more (checkpoint_layers wraps the first k layers, and
backward reaches them, to recompute them one at a time, only once it has gone through every other layer and freed its
activations); one layer's activation gradients (a bound: backward's working set in a layer is a few of its saved
tensors' sizes, e.g. Liger's MLP gradient c I beside the gradients written over gate and up); and the LM head's chunk
of h positions of fp32 logits (3 x h x vocab x 4 bytes). T is the tokens of the largest step in the rows its layout
builds (solopo.step.largest_step: with shared prompts each long prompt once per pair, padded rows to their context's
longest), the most over the layouts a batch can take. The step's peak adds the model's state: weights, their gradients
and AdamW's two moments, in the weights' dtype (a live reference's weights too), and with fp32 weights under bf16
autocast the linear weights' bf16 copies, which every matrix product casts and saves for backward (2 bytes a weight:
2.9 GiB for the 1.5B shape, 14 GiB for the 7B; autocast_copies). The gradients count beside the activations:
Lightning frees them only after the next step's forward (its closure runs training_step, then zero_grad, then
backward), so every forward but the first holds the previous step's gradients beside its activations.

The prediction is a bound; its margin over the measured peak is one layer's activation gradients less backward's
working set, and, where the peak comes in backward, the gradients not yet made. On one H100 (1.5B shape, bf16 weights,
Liger, DPO, short 1K, one pair a step; experiments/efficiency/results/solopo_grid_defaults.json at commit 58d0f3c)
the six cells without checkpointing measured 24.4 to 47.0 GiB and this formula predicts 2-3% more; the four with 5 or
18 layers checkpointed, 4-8% more (before Liger's kernels and the layouts were counted: 33-120% more). Fully
checkpointed steps at the longest contexts are over-predicted more: 161.5 GiB against 121 measured at 512K.

With offload the plan checkpoints every layer: a non-checkpointed layer would send its whole activations (more than A: a
tensor saved twice is copied twice; 1.4 A on the CPU count) to pinned host memory and back on the compute stream, and
the device's peak would not drop. By estimate, not yet measured on a GPU: for a 1.5B-shape layer, 1.4 x 103,480 bytes
per token each way over PCIe (tens of GB/s: about 10 us a token) against a forward of its 55M weights to recompute it (2
x 55M FLOPs at hundreds of TFLOP/s: under 1 us a token), and at 1M tokens terabytes of host memory. bench.py records the
prediction beside the measured peak.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from solopo.models import kernels, memory
from solopo.models.blocks import decoder_layers
from solopo.step.largest_step import StepTokens

log = logging.getLogger("solopo")
AUTO = "auto"
CHOICES = (False, True, AUTO)
MARGIN = 0.10  # of the device's memory kept free: the caching allocator's fragmentation, kernels' workspaces


@dataclass(frozen=True)
class StepShape:
    """What a step's activation memory depends on: the model's shape and dtypes, its kernels and its memory savers."""

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
    mlp_chunk_size: Optional[int] = None  # model.mlp_chunk_size
    offload: bool = False  # model.offload_activations
    liger: bool = False  # model.liger: Liger's RMSNorm and SwiGLU save less (A_liger)

    @classmethod
    def of(cls, config, compute_bytes: int, weight_bytes: int, mlp_chunk_size: Optional[int] = None,
           offload: bool = False, liger: bool = False) -> "StepShape":
        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads * head,
                   config.num_key_value_heads * head, config.num_attention_heads, head, config.intermediate_size,
                   config.vocab_size, compute_bytes, weight_bytes, mlp_chunk_size, offload, liger)

    def layer_bytes(self, chunked: bool = False, repeated_kv: bool = False) -> int:
        """A or A_liger (A_N when ``chunked``): bytes per token that one decoder layer keeps for backward (the module
        docstring's formulas); ``repeated_kv``: attention keeps keys and values at every query head (packed rows)."""
        c, h, wider = self.compute_bytes, self.hidden, self.wider()
        kv = self.q_dim if repeated_kv else self.kv_dim
        saved = 2 * self.layer_norm_bytes() + c * (2 * self.q_dim + 2 * kv) + 4 * self.heads + self.mlp_bytes()
        saved += 5 * c * h if wider else 0
        if chunked:
            saved -= self.mlp_bytes() + ((2 * c - self.weight_bytes) * h if wider else 0)
        return saved

    def gathered_bytes(self, repeated_kv: bool = False) -> int:
        """2c Dkv (Dq when ``repeated_kv``): a layer's bytes per key/value token gathered again (shared prompts)."""
        return 2 * self.compute_bytes * (self.q_dim if repeated_kv else self.kv_dim)

    def layer_norm_bytes(self) -> int:
        """One RMSNorm's bytes per token in a layer: eager, 4H + 2cH + 4 (its fp32 input, the cast back, its output,
        the reciprocal root); Liger's, r H + 4 + cH (its input as it came, the reciprocal root, its output: with wider
        weights none, as each projection casts its own copy)."""
        c, h = self.compute_bytes, self.hidden
        if not self.liger:
            return 4 * h + 2 * c * h + 4
        return self.residual_bytes() * h + 4 + (0 if self.wider() else c * h)

    def mlp_bytes(self) -> int:
        """The MLP's intermediates kept per token: eager 4cI (gate, up, silu(gate), their product), Liger's SwiGLU 3cI
        (gate and up, which its backward overwrites with their gradients, and the product)."""
        return (3 if self.liger else 4) * self.compute_bytes * self.ffn

    def wider(self) -> bool:
        """Whether the weights are wider than the compute dtype (fp32 weights under bf16 autocast)."""
        return self.weight_bytes > self.compute_bytes

    def checkpointed_bytes(self) -> int:
        """r H: bytes per token a checkpointed layer keeps: its input, in the residual stream's dtype."""
        return self.residual_bytes() * self.hidden

    def residual_bytes(self) -> int:
        """r: the residual stream's dtype, the weights' under autocast."""
        return max(self.weight_bytes, self.compute_bytes)

    def norm_bytes(self, chunked: bool = False) -> int:
        """The final norm's bytes per token: its fp32 input, the cast back and the reciprocal root (Liger's: its input
        and the reciprocal root); chunked, its input only."""
        r = self.residual_bytes()
        if chunked:
            return r * self.hidden
        return r * self.hidden + 4 + (0 if self.liger else 4 * self.hidden)

    def outside_layers_bytes(self, chunked: bool = False) -> int:
        """O: bytes per token outside the decoder layers: the final norm's, its output (held whole by the LM head's
        input, a view of its last position, unless autocast casts that view), the rotary tables, the token ids."""
        held = 0 if self.wider() else self.compute_bytes * self.hidden
        return self.norm_bytes(chunked) + held + self.resident_bytes()

    def resident_bytes(self) -> int:
        """Bytes per token that stay on the device under offload: the rotary tables (cos, sin) and the token ids."""
        return 2 * self.residual_bytes() * self.head_dim + 8

    def chunk_bytes(self) -> int:
        """Bytes per position of a chunk while it runs or is recomputed: the MLP's four intermediates and two of their
        gradients, or the final norm's saved tensors and their gradients, whichever is more."""
        return max(6 * self.compute_bytes * self.ffn, 2 * self.norm_bytes())

    def savers(self) -> str:
        """The savers counted, as their config keys; empty without any."""
        return ", ".join(([f"model.mlp_chunk_size={self.mlp_chunk_size}"] if self.mlp_chunk_size else [])
                         + (["model.offload_activations=true"] if self.offload else []))


def predict_activations(shape: StepShape, step: StepTokens, checkpointed: int, head_tokens: int) -> int:
    """Peak bytes of the activations of ``step`` with ``checkpointed`` of the layers checkpointed (the module
    docstring's formula): the checkpointed layers' inputs and what the model keeps outside the layers, less what the
    savers move or chunk away; the non-checkpointed layers' saved tensors or, once backward has gone through those, one
    checkpointed layer recomputed; one layer's gradients in backward, a chunk in flight, and the LM head's fp32 logits
    over ``head_tokens`` (at most a chunk) response positions."""
    tokens = step.total
    chunked, chunked_rows = step.longer_than(shape.mlp_chunk_size)
    whole = tokens - chunked
    layer = whole * shape.layer_bytes(repeated_kv=step.packed) + chunked * shape.layer_bytes(True, step.packed)  # A_x T
    layer += step.gathered * shape.gathered_bytes(step.packed)
    in_flight = chunked_rows * shape.mlp_chunk_size * shape.chunk_bytes() if chunked else 0
    head = 3 * head_tokens * shape.vocab * 4
    if shape.offload:  # every layer's activations wait on the host; one layer's input comes back to be recomputed
        kept = tokens * shape.resident_bytes() + (tokens * shape.checkpointed_bytes() if checkpointed else 0) + layer
    else:  # checkpoint_layers wraps the first k layers, whose backward (and recomputation) comes after all others'
        kept = checkpointed * tokens * shape.checkpointed_bytes()
        kept += whole * shape.outside_layers_bytes() + chunked * shape.outside_layers_bytes(chunked=True)
        kept += max(shape.layers - checkpointed, 1 if checkpointed else 0) * layer
    return kept + layer + in_flight + head


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
    savers: str = ""  # the memory savers the prediction counted (StepShape.savers)
    liger: bool = False  # whether it counted Liger's kernels (StepShape.liger)

    def describe(self) -> str:
        gib = 2**30
        room = "; no GPU: no memory to save" if self.budget is None else f" of {self.budget / gib:.1f} GiB usable"
        counted = f"; memory savers counted: {self.savers}" if self.savers else ""
        counted += "; Liger's RMSNorm and SwiGLU counted" if self.liger else ""
        return (f"model.gradient_checkpointing=auto: {self.checkpointed} of {self.layers} decoder layers checkpointed "
                f"(predicted peak {self.predicted_peak / gib:.1f} GiB{room}{counted})")


def plan_checkpointing(shape: StepShape, steps: Sequence[StepTokens], head_tokens: int, state: int,
                       budget: Optional[int]) -> Plan:
    """The fewest checkpointed layers whose predicted peak (``state`` + the activations of the largest of ``steps``,
    one per layout a batch can take) fits ``budget`` bytes; every layer when none fits, and under offload (the module
    docstring says why); none without a budget (the CPU, whose memory is the host's, and where offloading moves
    nothing)."""
    def plan(k: int) -> Plan:
        activations = max(predict_activations(shape, step, k, head_tokens) for step in steps)
        return Plan(k, shape.layers, state + activations, budget, shape.savers(), shape.liger)

    if budget is None:
        return plan(0)
    if shape.offload:
        return plan(shape.layers)
    return next((p for p in map(plan, range(shape.layers + 1)) if p.predicted_peak <= budget), plan(shape.layers))


def device_budget(device: torch.device) -> Optional[int]:
    """Bytes the step may use on ``device``: its free memory and what this process's allocator holds already (the
    model may be there), less MARGIN of the total; None on the CPU."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - MARGIN * total)


def checkpoint_layers(model: nn.Module, count: int) -> None:
    """Checkpoint the first ``count`` decoder layers and no other (non-reentrant, as model.gradient_checkpointing=true
    does for every layer)."""
    layers = decoder_layers(model)
    if count > 0:
        memory.enable_checkpointing(model)
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < count


def model_shape(model: nn.Module, compute_dtype: Optional[torch.dtype]) -> StepShape:
    """The StepShape of ``model`` as loaded: its config, its weights' dtype, ``compute_dtype`` (the autocast dtype;
    None: the weights' own), the memory savers applied to it and whether Liger's kernels were."""
    weight_bytes = next(model.parameters()).element_size()
    compute_bytes = compute_dtype.itemsize if compute_dtype is not None else weight_bytes
    return StepShape.of(model.config, compute_bytes, weight_bytes, *memory.savers(model),
                        liger=kernels.liger_applied(model))


def autocast_copies(model: nn.Module, compute_dtype: Optional[torch.dtype]) -> int:
    """Bytes of the compute-dtype copies autocast makes of the linear layers' wider weights (fp32 masters under
    bf16-mixed): each matrix product casts its weight once per forward and saves the copy for backward, so all of
    them are held at the peak. 0 without autocast or with weights already in the compute dtype."""
    if compute_dtype is None:
        return 0
    return sum(m.weight.numel() * compute_dtype.itemsize for m in model.modules()
               if isinstance(m, nn.Linear) and m.weight.element_size() > compute_dtype.itemsize)


def auto_checkpointing(model: nn.Module, steps: Sequence[StepTokens], chunk_size: int, device: torch.device,
                       compute_dtype: Optional[torch.dtype], world_size: int = 1,
                       beside: Sequence[nn.Module] = ()) -> Plan:
    """Decides and applies model.gradient_checkpointing=auto for ``steps`` (solopo.step.largest_step.step_tokens) on
    ``device``; ``chunk_size`` is the LM head's (logp_chunk_size), ``compute_dtype`` the autocast dtype (None: the
    weights' own), ``world_size`` the devices a sharded strategy spreads the model's state over (which gathers its
    weights in the compute dtype: no autocast copies), ``beside`` the models the step holds on the device besides
    ``model`` (a live reference): their weights count in the state."""
    head_tokens = min(max(step.response_total for step in steps), chunk_size)
    state = state_bytes(model, world_size) + (autocast_copies(model, compute_dtype) if world_size == 1 else 0)
    state += sum(state_bytes(other, world_size) for other in beside)
    plan = plan_checkpointing(model_shape(model, compute_dtype), steps, head_tokens, state, device_budget(device))
    checkpoint_layers(model, plan.checkpointed)
    return plan
