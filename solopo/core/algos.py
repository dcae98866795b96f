"""Preference-optimisation algorithms as plug-ins: a reward and a loss over per-sequence stats.

The Hydra group ``conf/algo/`` is the registry: each file names one class here and
its hyperparameters. The trainer never asks an algorithm's name, only its
capability ``needs_reference``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Protocol

import torch.nn.functional as F
from torch import Tensor

from solopo.core import losses
from solopo.settings.fields import Problems, number, refuse


@dataclass(frozen=True)
class Responses:
    """Per-sequence statistics of a batch of responses under one context.

    logps:     (B,) summed log-probs of the response tokens under the policy
    n_tokens:  (B,) number of response tokens
    ref_logps: (B,) the same under the frozen reference, or None when not needed
    """

    logps: Tensor
    n_tokens: Tensor
    ref_logps: Optional[Tensor] = None


class Algorithm(Protocol):
    needs_reference: bool

    def reward(self, responses: Responses) -> Tensor:
        """The implicit reward r(x, y), (B,)."""

    def loss(self, chosen: Responses, rejected: Responses, chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
        """The per-example preference loss, (B,)."""

    def loss_terms(self, chosen: Responses, rejected: Responses, chosen_rewards: Tensor,
                   rejected_rewards: Tensor) -> dict[str, Tensor]:
        """Batch means of the parts of the loss worth logging on their own, under TRL's names; {} when none."""


def _ref(responses: Responses) -> Tensor:
    if responses.ref_logps is None:
        raise ValueError("this algorithm needs reference log-probs, but none were computed")
    return responses.ref_logps


@dataclass(frozen=True, kw_only=True)
class DPO:
    """Direct Preference Optimisation. beta: KL strength (0.1 is the common default)."""

    beta: float
    needs_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        refuse(self.problems())

    def problems(self) -> Problems:
        return number("beta", self.beta, 0, above=True)  # beta scales (IPO: divides) the reward

    def reward(self, responses: Responses) -> Tensor:
        return losses.dpo_reward(responses.logps, _ref(responses), self.beta)

    def loss(self, chosen, rejected, chosen_rewards, rejected_rewards):
        return losses.dpo_loss(chosen_rewards, rejected_rewards)

    def loss_terms(self, chosen, rejected, chosen_rewards, rejected_rewards):
        return {}


@dataclass(frozen=True, kw_only=True)
class CDPO(DPO):
    """Conservative DPO: DPO with label smoothing eps (the chance a label is flipped)."""

    label_smoothing: float

    def problems(self) -> Problems:
        # At 0.5 a label is as likely flipped as kept: the loss pulls every margin to 0 and learns no preference.
        return super().problems() + number("label_smoothing", self.label_smoothing, 0, 0.5, below=True,
                                           note=" (0.5: flipped as often as kept, no preference learned)")

    def loss(self, chosen, rejected, chosen_rewards, rejected_rewards):
        return losses.cdpo_loss(chosen_rewards, rejected_rewards, self.label_smoothing)


@dataclass(frozen=True, kw_only=True)
class IPO(DPO):
    """Identity Preference Optimisation: a squared loss aiming at a margin of 1/(2 beta)."""

    def loss(self, chosen, rejected, chosen_rewards, rejected_rewards):
        return losses.ipo_loss(chosen_rewards, rejected_rewards, self.beta)


@dataclass(frozen=True, kw_only=True)
class SimPO:
    """SimPO: reference-free, length-normalised reward; gamma is the margin in reward units."""

    beta: float
    gamma: float
    needs_reference: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # gamma is a margin the chosen reward must clear (SimPO eq. 6, gamma >= 0; 0: none): a negative one would
        # count a chosen reward below the rejected one as good enough.
        refuse(number("beta", self.beta, 0, above=True)
               + number("gamma", self.gamma, 0, note=" (the target reward margin; 0: none)"))

    def reward(self, responses: Responses) -> Tensor:
        return losses.simpo_reward(responses.logps, responses.n_tokens, self.beta)

    def loss(self, chosen, rejected, chosen_rewards, rejected_rewards):
        return losses.simpo_loss(chosen_rewards, rejected_rewards, self.gamma)

    def loss_terms(self, chosen, rejected, chosen_rewards, rejected_rewards):
        return {}


@dataclass(frozen=True, kw_only=True)
class ORPO:
    """ORPO: chosen-response NLL plus lam times the odds-ratio loss; reference-free."""

    lam: float
    needs_reference: ClassVar[bool] = False

    def __post_init__(self) -> None:
        refuse(number("lam", self.lam, 0))

    def reward(self, responses: Responses) -> Tensor:
        return losses.orpo_reward(responses.logps, responses.n_tokens)

    def loss(self, chosen, rejected, chosen_rewards, rejected_rewards):
        return losses.orpo_loss(chosen.logps, chosen.n_tokens, chosen_rewards, rejected_rewards, self.lam)

    def loss_terms(self, chosen, rejected, chosen_rewards, rejected_rewards):
        """TRL's ORPO metrics: nll_loss = mean of -logps_w / n_w (the SFT term; solopo averages over each chosen
        response's tokens, TRL over the batch's prompt and response tokens, see README), and log_odds_ratio = mean
        log sigmoid(odds_w - odds_l) (the odds-ratio term before -lam; the rewards are the log-odds)."""
        return {"nll_loss": (-chosen.logps / chosen.n_tokens).mean(),
                "log_odds_ratio": F.logsigmoid(chosen_rewards - rejected_rewards).mean()}
