"""The "no attention mask within this context" switch that solopo_varlen and solopo_context share."""
import threading

from solopo.step import context_parallel, varlen
from solopo.step.mask_switch import MaskSwitch


def test_the_switch_nests_and_restores_the_state_it_found():
    switch = MaskSwitch()
    assert not switch.is_off
    with switch.off():
        with switch.off():
            assert switch.is_off
        assert switch.is_off  # the inner context left the outer one's state
    assert not switch.is_off


def test_the_switch_is_per_thread():
    switch, seen = MaskSwitch(), []
    with switch.off():
        other = threading.Thread(target=lambda: seen.append(switch.is_off))
        other.start()
        other.join()
        assert switch.is_off
    assert seen == [False]


def test_each_attention_implementation_has_its_own_switch():
    """A packed forward leaves the context-parallel mask on and a split forward the varlen one."""
    with varlen.packed_forward():
        assert varlen._mask.is_off and not context_parallel._mask.is_off
    with context_parallel.split_forward():
        assert context_parallel._mask.is_off and not varlen._mask.is_off
        assert context_parallel._mask.mask() is None
