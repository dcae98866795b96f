"""The NaN guard: a training step whose loss or gradient is not finite changes no weight, is counted, and too many
such steps in a row stop the run."""
from __future__ import annotations

import logging
import math
from typing import Optional

import pytorch_lightning as pl
import torch

from solopo.training.distributed import reduce_any

log = logging.getLogger("solopo")


class NumericalGuard(pl.Callback):
    """Skips the optimizer step (its gradients are dropped, so AdamW leaves weights and moments as they were) when the
    loss of the step, or of any micro-batch it accumulates, or its gradient norm is not finite. Logs the running
    count as train/skipped_steps; after max_consecutive bad steps in a row it stops training and sets stop_message.
    The verdict is reduced across ranks (each holds its own loss, and under FSDP its own gradient shards), so all
    ranks skip and stop together."""

    def __init__(self, max_consecutive: int):
        if max_consecutive < 1:
            raise ValueError(f"faults.max_consecutive_bad_steps must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.bad_steps: list[dict] = []  # {"step", "cause"} of every skipped step
        self.consecutive = 0
        self.stop_message: Optional[str] = None
        self._loss_finite: Optional[torch.Tensor] = None  # over the micro-batches of the current step

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        loss_finite, self._loss_finite = self._loss_finite, None
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # precision=16-mixed: the GradScaler skips overflowing steps and lowers its scale itself
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = gradients_finite(params, pl_module.device)
        finite = finite if loss_finite is None else finite & loss_finite
        if not reduce_any(~finite, pl_module.device):  # the step's one wait for the device, on every step
            self.consecutive = 0
            return
        # a bad step (rare): which value it was may take more looks at the device
        local = loss_finite is None or bool(loss_finite)
        cause = ("non-finite loss" if not local else nonfinite_gradient(pl_module, params)
                 or "non-finite values on another rank")
        for p in params:
            p.grad = None
        step = trainer.global_step + 1
        self.bad_steps.append({"step": step, "cause": cause})
        self.consecutive += 1
        log.warning("step %d skipped: %s", step, cause)
        if self.consecutive >= self.max_consecutive:
            self.stop_message = self._stop_message(step)
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("train/skipped_steps", float(len(self.bad_steps)), on_step=True, on_epoch=False)

    def _stop_message(self, step: int) -> str:
        streak = self.bad_steps[-self.consecutive:]
        causes = "; ".join(f"step {bad['step']}: {bad['cause']}" for bad in streak)
        return (f"training stopped at step {step}: {self.consecutive} steps in a row had non-finite values ({causes}); "
                f"the weights are those after step {streak[0]['step'] - 1}. Lower optim.lr, check the data, or raise "
                f"faults.max_consecutive_bad_steps")

    def summary(self) -> dict:
        return {"skipped_steps": len(self.bad_steps), "bad_steps": self.bad_steps, "stopped": self.stop_message}

    def state_dict(self) -> dict:  # a resumed run goes on counting
        return {"bad_steps": self.bad_steps, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.bad_steps, self.consecutive = list(state["bad_steps"]), state["consecutive"]


def _local_grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params]  # FSDP: this rank's shard


def gradients_finite(params: list[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    """Whether this rank's gradients (and their norm) are finite, as a device tensor: nothing waits for it here."""
    if not params:
        return torch.ones((), dtype=torch.bool, device=device)
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.promote_types(g.dtype, torch.float32))
                         for g in _local_grads(params)])
    return torch.isfinite(torch.linalg.vector_norm(norms))


def nonfinite_gradient(module: torch.nn.Module, params: list[torch.nn.Parameter]) -> Optional[str]:
    """None when the gradient norm is finite; otherwise which parameter's gradient is not (the first the optimizer
    holds, and how many more)."""
    if not params:
        return None
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.promote_types(g.dtype, torch.float32))
                         for g in _local_grads(params)])
    if torch.isfinite(torch.linalg.vector_norm(norms)):
        return None
    names = {id(p): name for name, p in module.named_parameters()}
    bad = [names.get(id(p), "?") for p, norm in zip(params, norms.tolist()) if not math.isfinite(norm)]
    if not bad:
        return "non-finite gradient norm (every gradient is finite; their norm overflows)"
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return f"non-finite gradient in {bad[0]}{more}"
