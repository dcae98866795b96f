"""DPO and its reference-based relatives (IPO, conservative DPO).

All three share the DPO reward r(x, y) = beta * (log pi(y|x) - log ref(y|x))
(Rafailov et al. 2023, eq. 5) and differ only in the loss on r_w - r_l.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def dpo_reward(logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """r = beta * (logps - ref_logps); logps are summed response log-probs, (B,) -> (B,)."""
    return beta * (logps - ref_logps)


def dpo_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """-log sigmoid(r_w - r_l) (DPO eq. 7), (B,) -> (B,)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def cdpo_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, label_smoothing: float) -> Tensor:
    """Conservative DPO: the preference label is flipped with probability eps.

    -(1 - eps) log sigmoid(r_w - r_l) - eps log sigmoid(r_l - r_w), (B,) -> (B,).
    eps = 0 is plain DPO.
    """
    margin = chosen_rewards - rejected_rewards
    return -(1.0 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)


def ipo_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17): (h - 1 / (2 tau))^2 with tau = beta.

    h is the difference of log-ratios, i.e. (r_w - r_l) / beta for DPO rewards. (B,) -> (B,).
    """
    h = (chosen_rewards - rejected_rewards) / beta
    return torch.square(h - 1.0 / (2.0 * beta))
