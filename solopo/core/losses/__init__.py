"""The SoLoPO math: rewards, preference losses and the SoLo-RA penalty.

Every function is pure and takes per-example tensors of shape (B,):
``logps`` are sums of response-token log-probs, ``n_tokens`` response lengths,
``*_rewards`` the algorithm's implicit rewards. Each returns per-example values;
the caller reduces.
"""
from solopo.core.losses.alignment import solo_ra_penalty
from solopo.core.losses.dpo import cdpo_loss, dpo_loss, dpo_reward, ipo_loss
from solopo.core.losses.orpo import orpo_loss, orpo_reward
from solopo.core.losses.simpo import simpo_loss, simpo_reward

__all__ = [
    "cdpo_loss",
    "dpo_loss",
    "dpo_reward",
    "ipo_loss",
    "orpo_loss",
    "orpo_reward",
    "simpo_loss",
    "simpo_reward",
    "solo_ra_penalty",
]
