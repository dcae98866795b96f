"""Every reward and loss against values worked out by hand (the arithmetic is in each docstring)."""
import math

import pytest
import torch

from solopo.core import losses

t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def close(actual, expected):
    torch.testing.assert_close(actual, t(*expected), rtol=1e-6, atol=1e-9)


def test_dpo_reward():
    """beta (logps - ref): 0.1 * (-10 + 12) = 0.2; 0.1 * (-4 + 4) = 0."""
    close(losses.dpo_reward(t(-10.0, -4.0), t(-12.0, -4.0), beta=0.1), [0.2, 0.0])


def test_dpo_loss():
    """-log sigmoid(0.2 - 0) = log(1 + e^-0.2) = log(1.8187308) = 0.5981389; margin 0 gives log 2."""
    close(losses.dpo_loss(t(0.2, 1.0), t(0.0, 1.0)), [0.5981389, math.log(2)])


def test_cdpo_loss():
    """eps = 0.1, margin 0.2: 0.9 * log(1 + e^-0.2) + 0.1 * log(1 + e^0.2) = 0.9 * 0.5981389 + 0.1 * 0.7981389."""
    close(losses.cdpo_loss(t(0.2), t(0.0), label_smoothing=0.1), [0.9 * 0.5981389 + 0.1 * 0.7981389])
    close(losses.cdpo_loss(t(0.2), t(0.0), label_smoothing=0.0), [0.5981389])


def test_ipo_loss():
    """beta 0.1: h = (0.2 - 0) / 0.1 = 2; target 1 / (2 * 0.1) = 5; (2 - 5)^2 = 9."""
    close(losses.ipo_loss(t(0.2), t(0.0), beta=0.1), [9.0])


def test_simpo_reward_and_loss():
    """beta 2: 2 * (-6 / 3) = -4 and 2 * (-3 / 6) = -1. Loss: -log sigmoid(-1 - (-2) - 1) = log 2."""
    close(losses.simpo_reward(t(-6.0, -3.0), t(3.0, 6.0), beta=2.0), [-4.0, -1.0])
    close(losses.simpo_loss(t(-1.0), t(-2.0), gamma=1.0), [math.log(2)])


def test_orpo_reward_is_log_odds_of_mean_token_prob():
    """Mean token prob 0.5 -> log(0.5 / 0.5) = 0; 0.8 -> log(0.8 / 0.2) = log 4."""
    logps = t(2 * math.log(0.5), 3 * math.log(0.8))
    close(losses.orpo_reward(logps, t(2.0, 3.0)), [0.0, math.log(4)])


def test_orpo_reward_stays_finite_near_certainty():
    m = torch.tensor([-1e-9], dtype=torch.float32, requires_grad=True)
    reward = losses.orpo_reward(m, torch.tensor([1.0]))
    reward.sum().backward()
    assert torch.isfinite(reward).all() and torch.isfinite(m.grad).all()
    assert reward.item() > 15  # log((1 - 1e-9) / 1e-9) ~ 20.7


def test_orpo_loss():
    """Chosen mean prob 0.5: NLL = log 2. odds_w = 0, odds_l = log(0.2 / 0.8) = -log 4:
    -log sigmoid(log 4) = log(1 + 1/4) = 0.2231436. Total log 2 + 0.1 * 0.2231436."""
    loss = losses.orpo_loss(t(2 * math.log(0.5)), t(2.0), t(0.0), t(-math.log(4)), lam=0.1)
    close(loss, [math.log(2) + 0.1 * 0.2231436])


@pytest.mark.parametrize("distance, expected", [
    ("abs", [0.5, 3.0]),
    ("squared", [0.25, 9.0]),
    ("softplus", [math.log(1 + math.exp(0.5)), math.log(1 + math.exp(3.0))]),
])
def test_solo_ra_penalty(distance, expected):
    """gaps |1 - 0.5| = 0.5 and |-2 - 1| = 3, then s."""
    close(losses.solo_ra_penalty(t(1.0, -2.0), t(0.5, 1.0), distance=distance), expected)


def test_solo_ra_default_distance_is_abs():
    close(losses.solo_ra_penalty(t(1.0), t(3.0)), [2.0])


def test_solo_ra_unknown_distance():
    with pytest.raises(ValueError, match="unknown SoLo-RA distance 'huber'"):
        losses.solo_ra_penalty(t(1.0), t(0.0), distance="huber")
