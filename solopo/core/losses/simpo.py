"""SimPO (Meng et al. 2024): a reference-free, length-normalised reward with a target margin."""
import torch.nn.functional as F
from torch import Tensor


def simpo_reward(logps: Tensor, n_tokens: Tensor, beta: float) -> Tensor:
    """r = (beta / |y|) * log pi(y|x): beta times the mean token log-prob, (B,) -> (B,)."""
    return beta * logps / n_tokens


def simpo_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, gamma: float) -> Tensor:
    """-log sigmoid(r_w - r_l - gamma), (B,) -> (B,).

    gamma is the target margin in reward units (SimPO eq. 6). The SimPO code base
    parametrises it as gamma_beta_ratio = gamma / beta.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
