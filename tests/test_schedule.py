"""The learning-rate schedule against hand-computed values."""
import pytest

from solopo.training.schedule import lr_factor


def test_warm_up_is_linear_and_starts_above_zero():
    # warmup=4: steps 0..3 give 1/5, 2/5, 3/5, 4/5; step 4 is the peak
    assert [lr_factor(s, total=20, warmup=4, floor=0.1) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_cosine_decays_to_the_floor_and_stays_there():
    # total=20, warmup=4: progress = (step - 4) / 16; at step 12 it is 1/2, so 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55
    assert lr_factor(12, total=20, warmup=4, floor=0.1) == pytest.approx(0.55)
    # step 8: progress 1/4, 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.1 + 0.45 * 1.7071068 = 0.868198
    assert lr_factor(8, total=20, warmup=4, floor=0.1) == pytest.approx(0.868198, abs=1e-6)
    assert lr_factor(20, total=20, warmup=4, floor=0.1) == pytest.approx(0.1)
    assert lr_factor(35, total=20, warmup=4, floor=0.1) == pytest.approx(0.1)  # past schedule_steps


def test_no_warm_up_starts_at_the_peak():
    assert lr_factor(0, total=10, warmup=0, floor=0.0) == 1.0
    assert lr_factor(5, total=10, warmup=0, floor=0.0) == pytest.approx(0.5)
    assert lr_factor(0, total=1, warmup=0, floor=0.3) == 1.0  # a one-step run trains at the peak
