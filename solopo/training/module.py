"""The LightningModule: a policy, a frozen reference when the algorithm needs one, and the SoLoPO objective."""
from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from solopo.core.algos import Algorithm, Responses
from solopo.core.objective import (CHOSEN, LONG, REJECTED, SHORT, Key, Method, ObjectiveOutput, SoLoRA,
                                   solopo_objective)
from solopo.step.batch import Batch, Group
from solopo.step.context_parallel import ContextSplit, Share
from solopo.step.logps import group_logps
from solopo.settings.fields import number, refuse, shown
from solopo.training.distributed import context_share, shard_mesh, shard_model
from solopo.training.precision import fsdp_param_dtype
from solopo.training.schedule import lr_factor
from solopo.training.step_means import StepMeans

ALL_SEQUENCES = [(SHORT, CHOSEN), (SHORT, REJECTED), (LONG, CHOSEN), (LONG, REJECTED)]


@dataclass(frozen=True, kw_only=True)
class OptimSettings:
    """AdamW with linear warm-up then cosine decay to min_lr_ratio * lr."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_ratio: float
    min_lr_ratio: float
    schedule_steps: Optional[int]  # the schedule's length; None: the steps this fit will take

    def __post_init__(self) -> None:
        betas = self.betas
        problems = number("lr", self.lr, 0, above=True) + number("weight_decay", self.weight_decay, 0)
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and not any(number("", b, 0, 1) or b == 1 for b in betas)):
            problems.append(f"betas={shown(betas)}: must be two numbers in [0, 1), e.g. [0.9,0.95]")
        refuse(problems + number("warmup_ratio", self.warmup_ratio, 0, 1) + number("min_lr_ratio", self.min_lr_ratio, 0, 1)
               + number("schedule_steps", self.schedule_steps, 1, integer=True, optional=True))
        object.__setattr__(self, "betas", tuple(betas))


class SoLoPOModule(pl.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        algo: Algorithm,
        ra: SoLoRA,
        method: Method,
        reference: Optional[nn.Module] = None,
        *,
        optim: OptimSettings,
        logp_chunk_size: int,
        cached_reference: bool = False,
        adapter_reference: bool = False,
        plain_po: bool = False,
        context: Optional[ContextSplit] = None,
    ):
        super().__init__()
        if algo.needs_reference and reference is None and not (cached_reference or adapter_reference):
            raise ValueError(f"{type(algo).__name__} needs a reference model or precomputed reference log-probs")
        self.policy = policy.train()  # from_pretrained returns eval mode
        self.reference = reference
        # LoRA: the reference is the policy with its adapter switched off, so no second copy of the model is held.
        self.adapter_reference = adapter_reference and reference is None and not cached_reference
        self.algo, self.ra, self.method, self.optim = algo, ra, method, optim
        self.logp_chunk_size = logp_chunk_size
        self.plain_po = plain_po  # plain PO data: SoLo-RA does not apply (solopo.core.objective.required_sequences)
        # The reference's weights are the base model's: they are left out of checkpoints (see on_save_checkpoint).
        self.strict_loading = reference is None
        self._step_means = StepMeans()
        self._epoch_means = StepMeans(across_ranks=False)  # of the step means, which are global already
        self._sharded = False
        self.context = context  # which groups are split over a context group (trainer.context_parallel)
        self._share: Optional[Share] = None  # this process's place in its context group, once the mesh exists

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # Lightning switches every child to train mode; the reference stays frozen
        return self

    def configure_model(self) -> None:
        # trainer=fsdp (FSDP2Strategy) gives the module a device mesh: shard the policy and a live reference.
        if self._device_mesh is None or self._sharded:
            return
        param_dtype = fsdp_param_dtype(str(self.trainer.precision))
        for model in (self.policy, self.reference):
            if model is not None:
                shard_model(model, shard_mesh(self._device_mesh), param_dtype)
        self._share = context_share(self._device_mesh)
        self._sharded = True

    def _reference_logps(self, group: Group) -> dict[Key, torch.Tensor]:
        """The reference's log-probs of each block: precomputed before training (solopo.training.reference), or
        from the live reference."""
        if group.ref_logps is not None:
            return group.split(group.ref_logps)
        with torch.no_grad(), self._reference_model() as model:
            return {key: logps for key, (logps, _) in group_logps(model, group, self.logp_chunk_size).items()}

    @contextlib.contextmanager
    def _reference_model(self):
        """The frozen reference, or under LoRA the policy with its adapter off, in eval mode (no dropout) meanwhile."""
        if not self.adapter_reference:
            yield self.reference
            return
        training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                yield self.policy
        finally:
            self.policy.train(training)

    def group_stats(self, group: Group) -> dict[Key, Responses]:
        """Response log-probs under the policy (and the reference, when the algorithm needs it) of one group."""
        policy = group_logps(self.policy, group, self.logp_chunk_size)
        needs_reference = group.ref_logps is not None or self.algo.needs_reference
        reference = self._reference_logps(group) if needs_reference else {}
        # A cached table holds float64: the reference enters the loss in the policy log-probs' own dtype.
        return {key: Responses(logps, n_tokens, None if key not in reference else reference[key].to(logps.dtype))
                for key, (logps, n_tokens) in policy.items()}

    def sequence_stats(self, batch: Batch) -> dict[Key, Responses]:
        """Response log-probs under the policy (and reference) for every (context, response) in the batch."""
        if self.context is not None:  # a split group runs this process's share of its rows
            batch = Batch({name: self.context.share_of(name, group, self._share) for name, group in batch.groups.items()})
        return {key: stats for group in batch.groups.values() for key, stats in self.group_stats(group).items()}

    def objective(self, batch: Batch) -> ObjectiveOutput:
        """The SoLoPO objective of a batch (solopo.core.objective): what training, validation and the benchmarks
        compute."""
        return self.objective_of(self.sequence_stats(batch))

    def objective_of(self, stats: dict[Key, Responses]) -> ObjectiveOutput:
        """The objective of sequence statistics already computed (a profiler times the two parts apart)."""
        return solopo_objective(self.algo, self.ra, self.method, stats, plain_po=self.plain_po)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        out = self.objective(batch)
        # A non-finite micro-batch is left out of the means; solopo.training.faults.NumericalGuard skips and counts its step.
        self._step_means.add(out.metrics, batch.n_pairs, finite=torch.isfinite(out.loss))
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0 or self.trainer.is_last_batch:
            means, pairs = self._step_means.pop()  # over the step's micro-batches and all ranks, on the device
            if means:  # a step none of whose pairs was finite adds nothing to the epoch, and logs NaN
                self._epoch_means.add(means, pairs, finite=pairs > 0)
                # Already global: each rank logs the same values. Per step only, so the dashboard has one train/loss.
                self.log("train/loss", means.pop("loss"), prog_bar=True, on_step=True, on_epoch=False)
                self.log_dict({f"train/{k}": v for k, v in means.items()}, on_step=True, on_epoch=False)
        return out.loss

    def on_train_epoch_end(self) -> None:
        # The epoch's means weighted by pairs, for results.json (solopo.training.results.final_metrics) and not for
        # the loggers, which have every step's value under the same name.
        means, pairs = self._epoch_means.pop()
        if means and pairs > 0:  # once per epoch, so reading the count from the device costs nothing
            self.log_dict({f"train/{k}": v for k, v in means.items()}, on_step=False, on_epoch=True, logger=False)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._log("val", self.objective(batch).metrics, batch)

    def _log(self, split: str, metrics: dict, batch: Batch) -> None:
        # Means weighted by the number of pairs, reduced across ranks: epoch values are exact over uneven batches.
        options = dict(batch_size=batch.n_pairs, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{split}/loss", metrics["loss"], prog_bar=True, **options)
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items() if k != "loss"}, **options)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # Fused AdamW unscales fp16 gradients itself, so Lightning cannot clip them first: fused only without a scaler.
        fused = torch.cuda.is_available() and all(p.is_cuda for p in params) and self._loss_scaler() is None
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, betas=self.optim.betas,
                                      weight_decay=self.optim.weight_decay, fused=fused or None)
        total = self.optim.schedule_steps or max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = functools.partial(lr_factor, total=total, warmup=int(self.optim.warmup_ratio * total),
                                     floor=self.optim.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @contextlib.contextmanager
    def without_reference(self):
        """The module without its reference model for a while (loading a sharded checkpoint, which holds none)."""
        reference, self.reference = self.reference, None
        try:
            yield
        finally:
            self.reference = reference

    def _loss_scaler(self):
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def on_before_optimizer_step(self, optimizer) -> None:
        # the rate this step applies (the scheduler moves it after the step)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning calls this once per optimizer step, after the gradients are accumulated, reduced across processes
        # and unscaled, so train/grad_norm is the global gradient's norm before clipping, whatever the layout. Sharded
        # (FSDP2) gradients are DTensors, whose norm is taken across all shards; clipping reuses it.
        params = [p for param_group in optimizer.param_groups for p in param_group["params"] if p.grad is not None]
        norm = total_grad_norm(params)
        if norm is not None:
            self.log("train/grad_norm", full(norm), on_step=True, on_epoch=False)
        # Without loss scaling (fp32, bf16) the gradients are clipped here, as they are: Lightning's mixed-precision
        # plugin refuses to clip for a fused optimizer even when there is nothing to unscale.
        if not gradient_clip_val or self._loss_scaler() is not None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        elif norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" not in checkpoint:  # a sharded checkpoint (trainer=fsdp) holds the policy's shards only
            return
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]


@contextlib.contextmanager
def intended_warnings_silenced():
    """Around a fit of SoLoPOModule: leaves out Lightning's warnings about what the module does on purpose, and
    only meanwhile (warnings filters are process-wide)."""
    with warnings.catch_warnings():
        # The frozen reference is in eval mode on purpose; Lightning's start-of-fit check would flag it.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        # Training metrics are reduced across ranks before they are logged (solopo.training.step_means); Lightning
        # cannot tell, and asks for sync_dist at the epoch's end.
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('train/")
        yield


def total_grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of all the gradients together (a DTensor when they are sharded), in the gradients' dtype; None when
    there are none (DeepSpeed keeps its gradients itself). The squares are summed in float64, one tensor at a time: an
    fp32 sum's last bits depend on how the gradient is split across ranks, and through the clipping factor and bf16
    weights they would make 1 and 2 processes train differently on the same global batch."""
    if not params:
        return None
    norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in params]
    return torch.linalg.vector_norm(torch.stack(norms)).to(params[0].grad.dtype)


def full(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (every rank must call this), or the tensor itself."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value

