"""The 95% intervals of small evaluations, against values computed by hand (z = 1.96)."""
import math

import pytest

from solopo.report.stats import Change, over_seeds, paired_bootstrap, paired_change, t_quantile, wilson


def test_wilson_by_hand():
    """3 of 6: centre 0.5 + 3.8415 / 12 = 0.8201, half-width 1.96 * sqrt(0.25 / 6 + 3.8415 / 144) = 0.5124,
    divided by 1 + 3.8415 / 6 = 1.6402: [0.1876, 0.8124]. 0 of 6: [0, 0.6402 / 1.6402 = 0.3903], not [0, 0]."""
    assert wilson(3, 6) == pytest.approx((0.1876, 0.8124), abs=1e-4)
    assert wilson(0, 6) == pytest.approx((0.0, 0.3903), abs=1e-4)
    assert wilson(6, 6) == pytest.approx((0.6097, 1.0), abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_paired_change_by_hand():
    """b = 1 case right only before, c = 2 right only after, of n = 6: difference (2 - 1) / 6 = +0.1667.
    b' = 1.5, c' = 2.5, n' = 8: centre 1 / 8 = 0.125, half-width 1.96 * sqrt(4 - 1 / 8) / 8 = 0.4823."""
    change = paired_change([1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 1])
    assert (change.difference, change.n) == (pytest.approx(1 / 6), 6)
    assert (change.low, change.high) == pytest.approx((0.125 - 0.4823, 0.125 + 0.4823), abs=1e-4)
    assert change.within_noise


def test_a_large_paired_change_is_outside_the_noise():
    """10 of 20 cases fixed, none broken: b' = 0.5, c' = 10.5, n' = 22, centre 10 / 22 = 0.4545, half-width
    1.96 * sqrt(11 - 100 / 22) / 22 = 0.2263: [0.2282, 0.6809], which excludes 0."""
    change = paired_change([0] * 20, [1] * 10 + [0] * 10)
    assert change.difference == 0.5 and (change.low, change.high) == pytest.approx((0.2282, 0.6809), abs=1e-4)
    assert not change.within_noise


def test_no_change_is_not_certainty():
    """Nothing changed on 10 cases: the plain Wald interval would be [0, 0]; here +-1.96 / 12 = 0.1633."""
    assert paired_change([1, 0] * 5, [1, 0] * 5) == Change(0.0, pytest.approx(-0.1633, abs=1e-4),
                                                            pytest.approx(0.1633, abs=1e-4), 10)


def test_paired_change_needs_the_same_cases():
    with pytest.raises(ValueError, match="the same cases before and after, not 3 and 2"):
        paired_change([1, 0, 1], [1, 0])


def test_paired_bootstrap_over_questions_alone_by_hand():
    """One seed, 200 differences half 0 and half 1: mean 0.5, and the bootstrap's 95% interval is about the normal
    one, 0.5 ± 1.96 * sqrt(0.25 / 200) = 0.5 ± 0.069. Equal differences leave no spread at all."""
    change = paired_bootstrap([[0.0, 1.0] * 100], draws=4000, seed=1)
    assert change.difference == 0.5 and change.n == 200
    assert change.low == pytest.approx(0.431, abs=0.015) and change.high == pytest.approx(0.569, abs=0.015)
    assert paired_bootstrap([[0.1] * 5, [0.1] * 7]) == Change(pytest.approx(0.1), pytest.approx(0.1),
                                                              pytest.approx(0.1), 12)


def test_paired_bootstrap_carries_the_spread_between_seeds():
    """Two seeds whose runs disagree (every question +1 under one, 0 under the other): resampling questions alone
    would give exactly 0.5; resampling the seeds too gives draws of 0, 0.5 and 1, so the interval is [0, 1] and
    holds 0: two seeds this far apart cannot separate the settings."""
    change = paired_bootstrap([[1.0] * 50, [0.0] * 50], seed=2)
    assert change.difference == 0.5 and (change.low, change.high) == (0.0, 1.0) and change.within_noise
    assert paired_bootstrap([[1.0] * 50, [0.0] * 50], seed=2) == change  # repeatable under its seed
    assert math.isnan(paired_bootstrap([]).difference)


def test_t_quantiles_against_the_tables():
    """Student's t, 97.5% (two-sided 95%): 12.7062 (df 1), 4.3027 (2), 2.7764 (4), 2.0423 (30); 95%: 2.1318 (4)."""
    for df, value in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)
    assert t_quantile(0.975, 100000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0.975, 0)


def test_the_interval_over_seeds_by_hand():
    """Seed means 15, 0 and 30: mean 15, sd sqrt((0 + 225 + 225) / 2) = 15, half-width 4.3027 * 15 / sqrt(3) =
    37.262: [-22.26, +52.26] over 6 question-seed pairs. One seed: no interval over seeds."""
    change = over_seeds([[10, 20], [0], [30, 30, 30]])
    assert (change.difference, change.n) == (15.0, 6)
    assert (change.low, change.high) == pytest.approx((15 - 37.262, 15 + 37.262), abs=1e-3)
    assert over_seeds([[1, 2, 3]]) is None and over_seeds([[1], []]) is None


def test_few_seeds_widen_the_interval_the_bootstrap_gives():
    """Five seeds whose means are 4, 5, 6, 7, 8 on 200 questions that each seed answers alike: the bootstrap over
    5 seeds gives about mean ± 1.96 * sqrt(4/5) * sd / sqrt(5); the t interval mean ± 2.776 * sd / sqrt(5), wider."""
    differences = [[float(m)] * 200 for m in (4, 5, 6, 7, 8)]
    boot, seeds = paired_bootstrap(differences), over_seeds(differences)
    assert seeds.high - seeds.low == pytest.approx(2 * 2.7764 * math.sqrt(2.5) / math.sqrt(5), abs=1e-3)
    assert seeds.high - seeds.low > 1.5 * (boot.high - boot.low)
