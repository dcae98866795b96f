"""The learning-rate schedule: linear warm-up, then cosine decay to a floor."""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """The multiple of the peak learning rate for optimizer step ``step`` (0-based) of ``total``.

    Warm-up: (step + 1) / (warmup + 1) for step < warmup, so the first step already moves the weights and the last
    warm-up step comes close to the peak. Then cosine from 1 at step = warmup to ``floor`` at step = total, held at
    ``floor`` after it (a run that trains past its schedule_steps):
        floor + (1 - floor) * (1 + cos(pi * progress)) / 2,   progress = (step - warmup) / (total - warmup).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
