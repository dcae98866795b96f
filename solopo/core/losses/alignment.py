"""SoLo-RA: short-to-long reward alignment (SoLoPO, arXiv 2505.11166)."""
import torch
import torch.nn.functional as F
from torch import Tensor

# s(t) applied to the reward gap t >= 0.
DISTANCES = {
    "abs": lambda gap: gap,  # plain L1 on the reward gap; the default
    "softplus": F.softplus,  # -log sigmoid(-t) = log(1 + e^t): the form of the paper's bound
    "squared": torch.square,
}


def solo_ra_penalty(short_rewards: Tensor, long_rewards: Tensor, distance: str = "abs") -> Tensor:
    """s(|r(x_short, y) - r(x_long, y)|) for one response y, (B,) -> (B,).

    distance picks s: "abs" (t), "softplus" (log(1 + e^t)) or "squared" (t^2).
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown SoLo-RA distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    return DISTANCES[distance](torch.abs(short_rewards - long_rewards))
