"""Sharding the policy (and a live reference) across processes with FSDP2, and what only one process should do.

trainer=fsdp runs Lightning's ModelParallelStrategy, which hands the module a device mesh and leaves the wrapping to
it (SoLoPOModule.configure_model calls shard_model): each decoder layer becomes one FSDP unit, so a layer's weights
are gathered just before it runs and freed after, and the root unit holds the embeddings, final norm and LM head.
FSDP2 shards per parameter, so frozen weights (a live reference, the base weights under LoRA) shard like the rest,
and it runs on CPU with the gloo backend as well as on GPUs with NCCL.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Optional

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn

# The model's output holds views (hidden states); nothing modifies them in place, which is what FSDP2 warns about.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as plain FSDP: one data-parallel group of every process of every node, no
    tensor parallelism (its "auto" sizes would make the processes of a node a tensor-parallel group).

    With ``context_parallel`` N > 1 the mesh is 2-D, (data_parallel M, context_parallel N) over M x N processes: the
    N processes of a context group (consecutive ranks, so a node's fast links join them) share each long sequence
    (solopo.step.context_parallel) and see the same batches (solopo.training.resume.batch_rank_and_world), and FSDP
    shards over all M x N processes (shard_mesh)."""

    def __init__(self, save_distributed_checkpoint: bool = True, context_parallel: int = 1, **kwargs):
        super().__init__(data_parallel_size=1, tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.context_parallel = context_parallel

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
        if self.context_parallel > 1:
            self._device_mesh = context_mesh(self.world_size, self.context_parallel, self.root_device.type)
            self.lightning_module._device_mesh = self._device_mesh

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict:
        # A sharded load asks the checkpoint for every weight of the module, and checkpoints leave the frozen reference
        # out (it is the base model, loaded at start): hide it while loading.
        hide = getattr(self.lightning_module, "without_reference", contextlib.nullcontext)
        with hide():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)


def local_gpu() -> torch.device:
    """This process's GPU: the one of its local rank (LOCAL_RANK, set for every process Lightning, torchrun or SLURM
    starts; 0 in a single process). Work done before the trainer runs (the reference pass, random weights) goes
    there, not to GPU 0 from every rank."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def is_global_zero() -> bool:
    """True on the process that writes results (rank 0), also before the process group exists: Lightning's launchers
    and torchrun set RANK, SLURM sets SLURM_PROCID."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0


def check_strategy(strategy_target: str, accelerator: str) -> None:
    """A strategy that cannot run on this machine stops the run in one line, before the trainer is built."""
    if "DeepSpeed" not in strategy_target:
        return
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise SystemExit("trainer=deepspeed needs CUDA GPUs (DeepSpeed ZeRO-3 runs on NCCL); on CPU processes use "
                         "trainer=fsdp or trainer=ddp with trainer.accelerator=cpu")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise SystemExit("trainer=deepspeed needs the deepspeed package: pip install deepspeed") from None


def decoder_layer_classes(model: nn.Module) -> set[type]:
    """The classes of the model's transformer blocks: transformers names them in ``_no_split_modules`` (the units
    that must stay on one device), which are the natural FSDP units."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(f"{type(model).__name__}: no decoder layer class found to shard (no _no_split_modules)")
    return classes


def shard_model(model: nn.Module, mesh, param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Applies FSDP2 (fully_shard) to every decoder layer, then to the whole model. param_dtype=bfloat16 gathers and
    computes in bf16 and reduces gradients in fp32; the shards, which the optimizer updates, keep the model's dtype
    (fp32 master weights for a model loaded in fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    layers = decoder_layer_classes(model)
    for module in list(model.modules()):
        if type(module) in layers:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def context_mesh(world_size: int, context_parallel: int, device_type: str):
    """The (data_parallel, context_parallel) mesh of ``world_size`` processes: rank = batch group x N + context rank."""
    from torch.distributed.device_mesh import init_device_mesh

    if world_size % context_parallel:
        raise ValueError(f"trainer.context_parallel={context_parallel} does not divide the {world_size} processes")
    return init_device_mesh(device_type, (world_size // context_parallel, context_parallel),
                            mesh_dim_names=("data_parallel", "context_parallel"))


def shard_mesh(mesh):
    """The 1-D mesh FSDP shards over: every process. The processes of a context group hold the same weights and
    each computes a part of the same gradient, so their gradients are averaged like any others'
    (solopo.step.context_parallel says why the average is exact)."""
    if "context_parallel" not in mesh.mesh_dim_names:
        return mesh["data_parallel"]
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(dist.group.WORLD, mesh.device_type, mesh_dim_names=("shard",))


def context_share(mesh):
    """This process's place in its context group (solopo.step.context_parallel.Share), or None without one."""
    from solopo.step.context_parallel import Share

    if "context_parallel" not in mesh.mesh_dim_names:
        return None
    return Share(mesh.get_group("context_parallel"), mesh.get_local_rank("context_parallel"),
                 mesh["context_parallel"].size())


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, gathered from every rank when sharded (every rank must call this).
    A tied weight (an LM head sharing the embedding) appears once, under its first name, as from_pretrained expects."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in names}


def reduce_any(flag: bool | torch.Tensor, device: torch.device) -> bool:
    """True when ``flag`` (a bool, or a device tensor, read once after the reduction) is True on any rank (so every
    rank takes the same branch)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    value = flag.to(device, torch.float32) if torch.is_tensor(flag) else torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over ranks (a copy; unchanged without torch.distributed)."""
    values = values.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
