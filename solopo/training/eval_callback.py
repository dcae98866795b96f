"""The long-context QA evaluation during training: sub-EM against the optimizer step, and the best step's weights.

Under several processes every rank evaluates its own copy of the policy (DDP: identical weights; FSDP: each forward
gathers the shards, so every rank must take part in generate() anyway) on the same questions, greedily; rank 0's
score is broadcast so that every rank keeps the same best step. This costs every rank the evaluation's time, as a
gather would, and keeps the code free of a second inference path. eval.engine=vllm starts one engine per rank.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import pytorch_lightning as pl
import torch

from solopo.scoring import points
from solopo.training.distributed import full_state_dict, is_sharded

log = logging.getLogger("solopo")


class EvalDuringTraining(pl.Callback):
    """Every ``every_n_steps`` optimizer steps: ``evaluation(policy, name)`` (solopo.eval.runner.Evaluation), its long-
    context sub-EM, in points, logged as eval/step/avg_long (and eval/step/sub_em@<length>) at that step and kept in
    ``curve`` with its interval; with ``keep_best``, a CPU copy of the trained weights of the best step (highest avg
    long, the first on a tie)."""

    def __init__(self, evaluation: Callable[..., dict], policy: torch.nn.Module, every_n_steps: int,
                 keep_best: bool = False):
        self.evaluation, self.policy, self.every_n_steps, self.keep_best = evaluation, policy, every_n_steps, keep_best
        self.curve: list[dict] = []
        self.best_step: Optional[int] = None
        self._best_weights: Optional[dict[str, torch.Tensor]] = None
        self._step_before_batch = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # after an optimizer step only: the micro-batches of gradient accumulation share one step number
        if step == self._step_before_batch or step % self.every_n_steps:
            return
        table = self.evaluation(self.policy, f"step {step}")
        score = points(float(trainer.strategy.broadcast(headline(table))))  # rank 0's number decides on every rank
        by_length = {n: points(v) for n, v in table["by_length"].items()}
        interval = table.get("ci95_long")
        self.curve.append({"step": step, "avg_long": score, "by_length": by_length,  # points, as every stated score
                           "ci95_long": interval and [points(x) for x in interval], "n_long": table.get("n_long")})
        if trainer.logger and trainer.is_global_zero:
            trainer.logger.log_metrics({"eval/step/avg_long": score, **{
                f"eval/step/sub_em@{n}": v for n, v in by_length.items()}}, step=step)
        if self.keep_best and (self.best_step is None or score > self._best_score()):
            self._best_weights = trained_weights(self.policy)
            self.best_step = step

    def restore_best(self) -> None:
        """Puts the best step's weights back into the policy (every rank must call this), so that the trained model
        evaluated and saved after training is that step's. Nothing without keep_best or a best step."""
        if not (self.keep_best and self.best_step is not None):
            return
        log.info("eval.keep_best: the weights of step %d (avg long sub-EM %.1f points) are the trained model",
                 self.best_step, self._best_score())
        if is_sharded(self.policy):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.policy, self._best_weights or {}, options=StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True, strict=False))
        else:
            self.policy.load_state_dict(self._best_weights, strict=False)

    def state_dict(self) -> dict:
        """What a checkpoint carries, so that a resumed run keeps the curve, the best step and, with keep_best, its
        weights (the trained parameters: a LoRA policy's adapter; a sharded policy's stay with the run that had them)."""
        state = {"curve": self.curve, "best_step": self.best_step}
        if self.keep_best and not is_sharded(self.policy):
            state["best_weights"] = self._best_weights
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.curve, self.best_step = list(state_dict["curve"]), state_dict["best_step"]
        self._best_weights = state_dict.get("best_weights")
        if self.keep_best and self.best_step is not None and self._best_weights is None:
            log.warning("eval.keep_best: the weights of the best step so far (%d) are not in the checkpoint (a sharded "
                        "policy): the best step is chosen among the steps after the resume", self.best_step)
            self.best_step = None

    def _best_score(self) -> float:
        return next(point["avg_long"] for point in self.curve if point["step"] == self.best_step)

    def record(self) -> dict:
        """What results.json keeps: the curve and the best step."""
        return {"every_n_steps": self.every_n_steps, "points": self.curve, "best_step": self.best_step}


def headline(table: dict) -> float:
    """The score a step is judged by: sub-EM over the long contexts, or over every case when there are none."""
    return table["average_long"] if math.isfinite(table["average_long"]) else table["average"]


def trained_weights(policy: torch.nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """A CPU copy of the parameters the optimizer updates (a LoRA policy: the adapter). Sharded weights are gathered
    (every rank must call this) and rank 0 alone keeps them (restore_best broadcasts them); otherwise every rank
    keeps its own."""
    trained = {name for name, param in policy.named_parameters() if param.requires_grad}
    sharded = is_sharded(policy)
    state = full_state_dict(policy)
    if sharded and torch.distributed.get_rank():
        return None
    return {name: value.clone() for name, value in state.items() if name in trained}


def eval_during_training(evaluation, policy: torch.nn.Module, settings) -> Optional[EvalDuringTraining]:
    """The callback for eval.every_n_steps (settings: the run's EvalSettings), or None when the run evaluates only
    before and after training."""
    if evaluation is None or settings is None or not settings.every_n_steps:
        return None
    return EvalDuringTraining(evaluation, policy, settings.every_n_steps, settings.keep_best)
