"""ORPO (Hong et al. 2024): SFT on the chosen response plus an odds-ratio preference term."""
import torch
import torch.nn.functional as F
from torch import Tensor


def orpo_reward(logps: Tensor, n_tokens: Tensor) -> Tensor:
    """Log-odds of the mean token log-prob m: m - log(1 - exp(m)), (B,) -> (B,).

    log(1 - exp(m)) is computed as log(-expm1(m)), which stays finite and accurate
    for m close to 0 (a near-certain response) where 1 - exp(m) underflows.
    """
    mean_logps = logps / n_tokens
    return mean_logps - torch.log(-torch.expm1(mean_logps))


def orpo_loss(
    chosen_logps: Tensor,
    chosen_n_tokens: Tensor,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    lam: float,
) -> Tensor:
    """Mean-token NLL of y_w + lam * -log sigmoid(odds_w - odds_l) (ORPO eq. 6), (B,) -> (B,)."""
    nll = -chosen_logps / chosen_n_tokens
    return nll - lam * F.logsigmoid(chosen_rewards - rejected_rewards)
