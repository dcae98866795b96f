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
from solopo.core.losses.alignment import DISTANCES
from solopo.settings.fields import flag, number, one_of, refuse, shown

SHORT, LONG = "short", "long"
CHOSEN, REJECTED = "chosen", "rejected"
Key = tuple[str, str]  # (context, response), e.g. ("long", "chosen")


@dataclass(frozen=True, kw_only=True)
class Method:
    """Which contexts the PO loss and the pairs use, and whether the method has a SoLo-RA term.

    name:       solopo | short_po | long_po | expand_long
    po_context: context under which the PO loss is computed ("short" or "long")
    pairs_from: context on which preference pairs were sampled (recorded; used by pair sampling)
    use_ra:     the method's declaration: false for the baselines, whose configs select ra=off. The loss reads
                only ``SoLoRA.alpha`` (the one switch); solopo.settings refuses a positive alpha with a baseline.
    """

    name: str
    po_context: str
    pairs_from: str
    use_ra: bool

    def __post_init__(self) -> None:
        refuse(one_of("po_context", self.po_context, (SHORT, LONG)) + one_of("pairs_from", self.pairs_from, (SHORT, LONG))
               + flag("use_ra", self.use_ra))


@dataclass(frozen=True, kw_only=True)
class SoLoRA:
    """The short-to-long reward alignment term.

    alpha:        weight of the term; 0 (ra=off) switches it off, and is the only switch
    responses:    which responses are aligned: ("chosen",) (the paper's form) or ("chosen", "rejected")
    distance:     s(.) in solo_ra_penalty: abs | softplus | squared
    detach_short: stop the gradient through the short-context reward (ablation)
    """

    alpha: float
    responses: tuple[str, ...]
    distance: str
    detach_short: bool

    def __post_init__(self) -> None:
        responses = self.responses
        if isinstance(responses, (list, tuple)):
            object.__setattr__(self, "responses", tuple(responses))
        problems = number("alpha", self.alpha, 0, note=" (0 turns SoLo-RA off)") + one_of("distance", self.distance, DISTANCES)
        if not (isinstance(responses, (list, tuple)) and responses and set(responses) <= {CHOSEN, REJECTED}):
            problems.append(f"responses={shown(responses)}: choose [chosen] or [chosen,rejected]")
        refuse(problems + flag("detach_short", self.detach_short))

    @property
    def active(self) -> bool:
        """Whether the term is part of the loss (alpha > 0): what every caller asks, never the method's name."""
        return self.alpha > 0

    def penalty(self, short_rewards: Tensor, long_rewards: Tensor) -> Tensor:
        if self.detach_short:
            short_rewards = short_rewards.detach()
        return solo_ra_penalty(short_rewards, long_rewards, self.distance)


def required_sequences(method: Method, ra: SoLoRA, plain_po: bool = False) -> list[Key]:
    """The (context, response) sequences one training step must run through the policy.

    plain_po: every pair's long prompt is its short one (plain PO data, e.g. a TRL file): a long-context sequence
    would repeat a short one token for token, so only the PO loss's two are run, and SoLo-RA does not apply.
    """
    keys = [(method.po_context, CHOSEN), (method.po_context, REJECTED)]
    if ra.active and not plain_po:
        for response in ra.responses:
            keys += [(SHORT, response), (LONG, response)]
    return list(dict.fromkeys(keys))  # ordered, without duplicates


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: Tensor  # scalar, what is optimised
    metrics: dict[str, Tensor]  # scalars, detached


def solopo_objective(
    algo: Algorithm, ra: SoLoRA, method: Method, stats: Mapping[Key, Responses], plain_po: bool = False
) -> ObjectiveOutput:
    """Batch-mean loss and metrics from per-sequence statistics keyed by (context, response).

    plain_po (see ``required_sequences``): SoLo-RA does not apply, so L = L_PO and no ra_loss is reported (its gap
    is 0 by construction, which would read as perfect alignment); the PO loss is the one a run of the third
    sequence computes.
    """
    rewards = {key: algo.reward(responses) for key, responses in stats.items()}
    ctx = method.po_context
    chosen, rejected = rewards[(ctx, CHOSEN)], rewards[(ctx, REJECTED)]
    po_loss = algo.loss(stats[(ctx, CHOSEN)], stats[(ctx, REJECTED)], chosen, rejected).mean()

    ra_loss = torch.zeros((), dtype=po_loss.dtype, device=po_loss.device)
    if ra.active and not plain_po:
        for response in ra.responses:
            ra_loss = ra_loss + ra.penalty(rewards[(SHORT, response)], rewards[(LONG, response)]).mean()
    loss = po_loss + ra.alpha * ra_loss

    metrics = {"loss": loss, "po_loss": po_loss, "ra_loss": ra_loss}
    metrics.update(algo.loss_terms(stats[(ctx, CHOSEN)], stats[(ctx, REJECTED)], chosen, rejected))
    if plain_po:
        del metrics["ra_loss"]
    metrics.update(reward_metrics(rewards, ctx))
    metrics.update(logps_metrics(stats, ctx))
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


def metric_names(algo: Algorithm, ra: SoLoRA, method: Method) -> set[str]:
    """Every metric solopo_objective reports for these settings, with or without plain PO data (the data decide which
    the run gets): its output on a batch of one made-up example, so the names are the ones a run logs, not a copy."""
    names: set[str] = set()
    for plain_po in (False, True):
        one = Responses(logps=torch.tensor([-1.0]), n_tokens=torch.tensor([1.0]), ref_logps=torch.tensor([-1.0]))
        stats = {key: one for key in required_sequences(method, ra, plain_po)}
        names |= set(solopo_objective(algo, ra, method, stats, plain_po).metrics)
    return names


def reward_metrics(rewards: Mapping[Key, Tensor], ctx: str) -> dict[str, Tensor]:
    """TRL's rewards/* under the PO context (margins = mean(r_w - r_l), accuracies = share of pairs with r_w > r_l);
    solopo's own under ra/, where a step runs the chosen response under both contexts: its reward under each
    (chosen_short, chosen_long), the signed gap mean(r_short - r_long) (gap_signed: which side SoLo-RA moves) and the
    SoLo-RA gap mean |r_short - r_long| (gap; gap_rejected for the rejected response)."""
    chosen, rejected = rewards[(ctx, CHOSEN)], rewards[(ctx, REJECTED)]
    out = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
    }
    if (LONG, CHOSEN) in rewards:
        out["ra/chosen_long"] = rewards[(LONG, CHOSEN)].mean()
    if (SHORT, CHOSEN) in rewards and (LONG, CHOSEN) in rewards:
        out["ra/chosen_short"] = rewards[(SHORT, CHOSEN)].mean()
        out["ra/gap_signed"] = (rewards[(SHORT, CHOSEN)] - rewards[(LONG, CHOSEN)]).mean()
    for response in (CHOSEN, REJECTED):
        if (SHORT, response) in rewards and (LONG, response) in rewards:
            gap = torch.abs(rewards[(SHORT, response)] - rewards[(LONG, response)]).mean()
            out["ra/gap" if response == CHOSEN else "ra/gap_rejected"] = gap
    return out


def logps_metrics(stats: Mapping[Key, Responses], ctx: str) -> dict[str, Tensor]:
    """TRL's logps/chosen and logps/rejected: batch means of the policy's summed response log-probs, PO context."""
    return {f"logps/{response}": stats[(ctx, response)].logps.mean() for response in (CHOSEN, REJECTED)}
