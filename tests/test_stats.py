"""The 95% intervals of small evaluations, against values computed by hand (z = 1.96)."""
import math

import pytest

from solopo.report.stats import Change, paired_change, wilson


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
    with pytest.raises(ValueError, match="3 cases before, 2 after"):
        paired_change([1, 0, 1], [1, 0])
