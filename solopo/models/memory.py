"""Opt-in memory savers for the longest contexts; both compute exactly what the plain model computes.

``model.mlp_chunk_size=N`` (sequence-chunked MLP and final norm, as mini-sequence training does): a decoder layer's
MLP turns (B, L, H) into (B, L, I) activations, I = 4-6 x H (gate, up, their product), so at long L the MLP's
intermediate, not attention, sets the peak. Run position-wise, it gives the same result N positions at a time, each
chunk recomputed in backward (checkpoint), so at most (B, N, I) of it exists at once. The final norm, which runs
outside the checkpointed layers and keeps its fp32 intermediates (B, L, H) for backward, runs the same way. What it
saves: without gradient checkpointing, every layer's 4 (B, L, I) tensors; with it, those of the one layer that
backward recomputes (they and their gradients, about 6 B L I values, set the checkpointed step's peak).

``model.offload_activations=true``: what autograd saves for backward during the model's forward moves to pinned host
memory and comes back when backward needs it. With gradient checkpointing that is each layer's input (B, L, H) and
the final norm's, the only activations a checkpointed model keeps; the recomputation in backward stays on the
device. The copies run on the compute stream, without waiting on the host. What it saves: all layers' inputs,
layers x B L H values, which set the peak once the recomputed layer is small (with mlp_chunk_size) and the model deep.

Neither touches attention: both assume a kernel whose memory is linear in L (flash, memory-efficient, varlen). On
CUDA, fp32 attention with grouped key/value heads has none (flash needs 16-bit inputs, the memory-efficient kernel
takes no grouped heads), so SDPA runs its math kernel, whose (B, heads, L, L) scores and their gradients are the
peak, and no saver moves it: mixed precision (bf16 attention) avoids it.
"""
from __future__ import annotations

import math
from types import MethodType
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from solopo.models.blocks import final_norm, mlps
from solopo.settings.fields import ConfigError

# Below this a saved tensor (positions, masks, small weights) costs more in copies than it frees.
MIN_OFFLOAD_BYTES = 1 << 20
# torch's pinned-memory allocator rounds every request up to a power of two: a layer input of 1M x 1536 bf16 values
# (3 GiB) would take 4. Host copies are made of power-of-two pieces of at least this many bytes instead (host_pieces).
HOST_PIECE_BYTES = 1 << 20


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant gradient checkpointing hooks on the model's decoder layers, every layer's flag on (a caller may
    then turn some off): transformers' activation_checkpointing_enable, or gradient_checkpointing_enable where the
    installed version has only that name (it warns that the name is deprecated from transformers 5.25)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def chunk_sequences(model: nn.Module, chunk_size: int) -> None:
    """Every decoder layer's MLP and the final norm of ``model`` run ``chunk_size`` sequence positions at a time
    (dim -2 of their (B, L, H) input), each chunk under checkpoint while gradients are on: out[:, i:i+n] =
    block(x[:, i:i+n]). Patches the modules' forward (after Liger's, if any), so the weights and their names stay.
    A model whose decoder layers hold no ``mlp`` (e.g. OPT's fc1/fc2) is refused: nothing would be chunked."""
    if not mlps(model):
        model_type = getattr(getattr(model, "config", None), "model_type", "this")
        raise ConfigError(f"model.mlp_chunk_size={chunk_size}: the decoder layers of {model_type} models hold no `mlp` "
                          "block to run in chunks (Llama, Qwen2, Mistral and Gemma name theirs so); set "
                          "model.mlp_chunk_size=null")
    blocks = mlps(model) + [norm for norm in [final_norm(model)] if norm is not None]
    for block in blocks:
        block.solopo_unchunked_forward = block.forward  # a bound method: a copied module calls its own
        block.solopo_chunk_size = chunk_size
        block.forward = MethodType(_chunked_forward, block)


def _chunked_forward(block: nn.Module, hidden: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    forward, size = block.solopo_unchunked_forward, block.solopo_chunk_size
    if hidden.shape[-2] <= size:
        return forward(hidden, *args, **kwargs)
    pieces = [checkpoint(_on_contiguous, forward, part, *args, use_reentrant=False, **kwargs)
              if torch.is_grad_enabled() else _on_contiguous(forward, part, *args, **kwargs)
              for part in hidden.split(size, dim=-2)]
    return torch.cat(pieces, dim=-2)


def _on_contiguous(forward: Callable, part: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """``forward`` on a contiguous copy of a chunk (a view across rows): some blocks flatten their input with view
    (GPT-2's Conv1D). Inside the checkpoint, so backward keeps the view and the copy is made again, not saved."""
    return forward(part.contiguous(), *args, **kwargs)


def savers(model: nn.Module) -> tuple[Optional[int], bool]:
    """The savers applied to ``model`` (through any wrapper, e.g. LoRA's), as the memory predictor
    (solopo.step.checkpointing) counts them: the MLPs' chunk size (None: whole) and whether activations go to the
    host."""
    chunk = next((m.solopo_chunk_size for m in mlps(model) if hasattr(m, "solopo_chunk_size")), None)
    return chunk, any(isinstance(getattr(m, "solopo_offload", None), HostOffload) for m in model.modules())


class HostOffload:
    """Saved-tensor hooks that keep what autograd saves in host memory: a device tensor of at least ``min_bytes``
    (not a parameter or a view of one, e.g. a transposed
    weight: those stay resident anyway) is copied to pinned host memory when saved and back to its device
    when backward unpacks it. ``offered_bytes`` counts what it was given to move (host tensors stay where they are)."""

    def __init__(self, min_bytes: int = MIN_OFFLOAD_BYTES):
        self.min_bytes = min_bytes
        self.offered_bytes = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def moves(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is one to keep on the host (counted in ``offered_bytes``)."""
        size = tensor.numel() * tensor.element_size()
        if size < self.min_bytes or isinstance(tensor, nn.Parameter) or isinstance(tensor._base, nn.Parameter):
            return False
        self.offered_bytes += size
        return True

    def pack(self, tensor: Tensor) -> Any:
        if not self.moves(tensor) or tensor.device.type == "cpu":
            return tensor
        return to_host(tensor, lambda size: torch.empty(size, dtype=torch.uint8, pin_memory=True))

    @staticmethod
    def unpack(packed: Any) -> Tensor:
        return packed if isinstance(packed, Tensor) else from_host(packed)


def host_pieces(nbytes: int, smallest: int = HOST_PIECE_BYTES) -> list[tuple[int, int]]:
    """(start, size) of the pieces that hold ``nbytes`` bytes: ``nbytes`` rounded up to a multiple of ``smallest`` (a
    power of two), as the sum of distinct powers of two, largest first. An allocator that rounds each request up to a
    power of two then wastes less than ``smallest`` bytes, where one request for it all could waste almost as much as
    it holds."""
    total, pieces, start = -(-nbytes // smallest) * smallest, [], 0
    for bit in reversed(range(total.bit_length())):
        if total >> bit & 1:
            pieces.append((start, 1 << bit))
            start += 1 << bit
    return pieces


def to_host(tensor: Tensor, allocate: Callable[[int], Tensor]) -> tuple:
    """``tensor``'s bytes copied into host pieces (host_pieces) that ``allocate(size)`` makes (pinned: the copies do
    not wait for the host, and each is ordered before any later kernel that reuses the tensor's memory), with what
    from_host needs to make it again."""
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    pieces = []
    for start, size in host_pieces(data.numel()):
        part = data[start : start + size]
        pieces.append(allocate(size))
        pieces[-1][: part.numel()].copy_(part, non_blocking=True)
    return tensor.device, tensor.dtype, tensor.shape, pieces


def from_host(packed: tuple) -> Tensor:
    """The tensor to_host copied, on its device again."""
    device, dtype, shape, pieces = packed
    nbytes = math.prod(shape) * dtype.itemsize
    data = torch.empty(nbytes, dtype=torch.uint8, device=device)
    for (start, size), piece in zip(host_pieces(nbytes), pieces):
        part = data[start : start + size]
        part.copy_(piece[: part.numel()], non_blocking=True)
    return data.view(dtype).view(shape)


def offload_activations(model: nn.Module, offload: Optional[HostOffload] = None) -> HostOffload:
    """``model``'s forward runs under ``offload``'s hooks (a new HostOffload by default; entered by a forward pre-hook,
    left by a forward hook that runs even when the forward fails), so its signature, which generate() inspects, stays
    as it is."""
    offload = offload or HostOffload()
    model.solopo_offload = offload  # read by savers()
    model.register_forward_pre_hook(lambda module, args: offload.hooks.__enter__())
    model.register_forward_hook(lambda module, args, output: offload.hooks.__exit__(None, None, None), always_call=True)
    return offload
