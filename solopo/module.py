"""The LightningModule: a policy, a frozen reference when the algorithm needs one, and the SoLoPO objective."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from solopo.algos import Algorithm, Responses
from solopo.logps import group_logps
from solopo.objective import CHOSEN, LONG, REJECTED, SHORT, Method, SoLoRA, solopo_objective

# The frozen reference is in eval mode on purpose; Lightning's start-of-fit check would flag it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

ALL_SEQUENCES = [(SHORT, CHOSEN), (SHORT, REJECTED), (LONG, CHOSEN), (LONG, REJECTED)]


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warm-up then cosine decay to min_lr_ratio * lr."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    schedule_steps: Optional[int] = None  # the schedule's length; None: the steps this fit will take


class SoLoPOModule(pl.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        algo: Algorithm,
        ra: SoLoRA,
        method: Method,
        reference: Optional[nn.Module] = None,
        optim: OptimSettings = OptimSettings(),
        logp_chunk_size: int = 1024,
        cached_reference: bool = False,
    ):
        super().__init__()
        if algo.needs_reference and reference is None and not cached_reference:
            raise ValueError(f"{type(algo).__name__} needs a reference model or precomputed reference log-probs")
        self.policy = policy.train()  # from_pretrained returns eval mode
        self.reference = reference
        self.algo, self.ra, self.method, self.optim = algo, ra, method, optim
        self.logp_chunk_size = logp_chunk_size
        # The reference's weights are the base model's: they are left out of checkpoints (see on_save_checkpoint).
        self.strict_loading = reference is None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # Lightning switches every child to train mode; the reference stays frozen
        return self

    def sequence_stats(self, batch: dict) -> dict[tuple[str, str], Responses]:
        """Response log-probs under the policy (and reference) for every (context, response) in the batch."""
        stats = {}
        for group in batch.values():
            policy = group_logps(self.policy, group, self.logp_chunk_size)
            reference = None
            if "ref_logps" in group:  # precomputed once before training (solopo.reference)
                size = group["ref_logps"].shape[0] // len(group["keys"])
                reference = {tuple(k): (group["ref_logps"][i * size : (i + 1) * size], None) for i, k in enumerate(group["keys"])}
            elif self.algo.needs_reference:
                with torch.no_grad():
                    reference = group_logps(self.reference, group, self.logp_chunk_size)
            for key, (logps, n_tokens) in policy.items():
                stats[key] = Responses(logps, n_tokens, None if reference is None else reference[key][0])
        return stats

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = solopo_objective(self.algo, self.ra, self.method, self.sequence_stats(batch))
        if torch.isfinite(out.loss):  # a non-finite step is skipped and counted by solopo.faults.NumericalGuard
            self._log("train", out.metrics, batch)
        return out.loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = solopo_objective(self.algo, self.ra, self.method, self.sequence_stats(batch))
        self._log("val", out.metrics, batch)

    def _log(self, split: str, metrics: dict, batch: dict) -> None:
        first = next(iter(batch.values()))
        pairs = first["response_mask"].shape[0] if "attention_mask" in first else int(first["sequence_ids"].max()) + 1
        pairs //= len(first["keys"])
        # Means weighted by the number of pairs, reduced across ranks: epoch values are exact over uneven batches.
        options = dict(batch_size=pairs, on_step=split == "train", on_epoch=True, sync_dist=True)
        self.log(f"{split}/loss", metrics["loss"], prog_bar=True, **options)
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items() if k != "loss"}, **options)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, betas=self.optim.betas,
                                      weight_decay=self.optim.weight_decay, fused=fused or None)
        total = self.optim.schedule_steps or max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.optim.warmup_ratio * total)
        floor = self.optim.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
