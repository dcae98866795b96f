"""The SoLoPO objective, assembled from an algorithm, a SoLo-RA term and a method.

    L = L_PO(x_po, y_w, y_l) + alpha * sum_{y in ra.responses} s(|r(x_short, y) - r(x_long, y)|)

x_po is the short context for SoLoPO and short-PO and the long context for the
Long-PO and Expand-long baselines (``Method``). Everything here is a pure function
of per-sequence statistics, so it is tested without a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from solopo.core.algos import Algorithm, Responses
from solopo.core.losses import solo_ra_penalty

SHORT, LONG = "short", "long"
CHOSEN, REJECTED = "chosen", "rejected"
Key = tuple[str, str]  # (context, response), e.g. ("long", "chosen")


@dataclass(frozen=True)
class Method:
    """Which contexts the PO loss and the pairs use, and whether SoLo-RA is applied.

    name:       solopo | short_po | long_po | expand_long
    po_context: context under which the PO loss is computed ("short" or "long")
    pairs_from: context on which preference pairs were sampled (recorded; used by pair sampling)
    use_ra:     whether the SoLo-RA term is part of the loss
    """

    name: str = "solopo"
    po_context: str = SHORT
    pairs_from: str = SHORT
    use_ra: bool = True

    def __post_init__(self) -> None:
        for field in ("po_context", "pairs_from"):
            if getattr(self, field) not in (SHORT, LONG):
                raise ValueError(f"method.{field} must be 'short' or 'long', got {getattr(self, field)!r}")


@dataclass(frozen=True)
class SoLoRA:
    """The short-to-long reward alignment term.

    alpha:        weight of the term (0 switches it off)
    responses:    which responses are aligned: ("chosen",) (the paper's form) or ("chosen", "rejected")
    distance:     s(.) in solo_ra_penalty: abs | softplus | squared
    detach_short: stop the gradient through the short-context reward (ablation)
    """

    alpha: float = 1.0
    responses: tuple[str, ...] = (CHOSEN,)
    distance: str = "abs"
    detach_short: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "responses", tuple(self.responses))
        if self.alpha < 0:
            raise ValueError(f"ra.alpha must be >= 0, got {self.alpha}")
        unknown = set(self.responses) - {CHOSEN, REJECTED}
        if unknown:
            raise ValueError(f"ra.responses may hold 'chosen' and 'rejected', got {sorted(unknown)}")
        solo_ra_penalty(torch.zeros(1), torch.zeros(1), self.distance)  # fails early on a bad name

    def penalty(self, short_rewards: Tensor, long_rewards: Tensor) -> Tensor:
        if self.detach_short:
            short_rewards = short_rewards.detach()
        return solo_ra_penalty(short_rewards, long_rewards, self.distance)


def required_sequences(method: Method, ra: SoLoRA) -> list[Key]:
    """The (context, response) sequences one training step must run through the policy."""
    keys = [(method.po_context, CHOSEN), (method.po_context, REJECTED)]
    if method.use_ra and ra.alpha > 0:
        for response in ra.responses:
            keys += [(SHORT, response), (LONG, response)]
    return list(dict.fromkeys(keys))  # ordered, without duplicates


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: Tensor  # scalar, what is optimised
    metrics: dict[str, Tensor]  # scalars, detached


def solopo_objective(
    algo: Algorithm, ra: SoLoRA, method: Method, stats: Mapping[Key, Responses]
) -> ObjectiveOutput:
    """Batch-mean loss and metrics from per-sequence statistics keyed by (context, response)."""
    rewards = {key: algo.reward(responses) for key, responses in stats.items()}
    ctx = method.po_context
    chosen, rejected = rewards[(ctx, CHOSEN)], rewards[(ctx, REJECTED)]
    po_loss = algo.loss(stats[(ctx, CHOSEN)], stats[(ctx, REJECTED)], chosen, rejected).mean()

    ra_loss = torch.zeros((), dtype=po_loss.dtype, device=po_loss.device)
    if method.use_ra and ra.alpha > 0:
        for response in ra.responses:
            ra_loss = ra_loss + ra.penalty(rewards[(SHORT, response)], rewards[(LONG, response)]).mean()
    loss = po_loss + ra.alpha * ra_loss

    metrics = {"loss": loss, "po_loss": po_loss, "ra_loss": ra_loss}
    metrics.update(reward_metrics(rewards, ctx))
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


def reward_metrics(rewards: Mapping[Key, Tensor], ctx: str) -> dict[str, Tensor]:
    """rewards/* under the PO context, plus the long-context chosen reward and the SoLo-RA gap."""
    chosen, rejected = rewards[(ctx, CHOSEN)], rewards[(ctx, REJECTED)]
    out = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margin": (chosen - rejected).mean(),
        "rewards/accuracy": (chosen > rejected).float().mean(),
    }
    if (LONG, CHOSEN) in rewards:
        out["rewards/chosen_long"] = rewards[(LONG, CHOSEN)].mean()
    for response in (CHOSEN, REJECTED):
        if (SHORT, response) in rewards and (LONG, response) in rewards:
            gap = torch.abs(rewards[(SHORT, response)] - rewards[(LONG, response)]).mean()
            out["ra/gap" if response == CHOSEN else "ra/gap_rejected"] = gap
    return out
