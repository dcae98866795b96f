"""The switch behind "no attention mask within this context": solopo's attention implementations (solopo_varlen,
solopo_context) register a mask function with transformers that returns SDPA's usual mask, except within a context
in which the step runs rows whose attention the implementation arranges itself (packed rows: their sequence
boundaries; split rows: their global positions). There transformers would build an O(T^2) mask that nothing reads.

The switch is per thread, and nests: leaving a context restores the state it found.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator


class MaskSwitch:
    """One attention implementation's "no mask here" state; ``off()`` is the context, ``mask`` the mask function."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def is_off(self) -> bool:
        """Whether this thread is within ``off()``: the model builds no attention mask."""
        return getattr(self._local, "off", False)

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        previous, self._local.off = self.is_off, True
        try:
            yield
        finally:
            self._local.off = previous

    def mask(self, *args, **kwargs):
        """transformers' mask-function contract: SDPA's mask for these arguments, None within ``off()``."""
        from transformers.masking_utils import sdpa_mask

        return None if self.is_off else sdpa_mask(*args, **kwargs)

    def register(self, name: str, attention: Callable) -> None:
        """Make `attn_implementation=name` loadable: ``attention`` as its attention function, this switch's mask."""
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        AttentionInterface.register(name, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, self.mask)
