"""Progress of long loops (sampling, evaluation, the reference pass): a bar on a terminal and, in a log file, a line
now and then, since a run's log would otherwise show nothing for minutes."""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterator, Sequence, Sized

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def progress(batches: Sequence[Sized], desc: str, copies: int = 1, unit: str = "answers", every_s: float = 30.0,
             every_share: float = 0.1, clock: Callable[[], float] = time.monotonic) -> Iterator[Sized]:
    """``batches`` one by one, their progress shown: tqdm's bar where it shows (a terminal), else, for a log file, one
    line every ``every_s`` seconds or ``every_share`` of the batches, whichever comes first, and after the last:
    batches done / in all, ``unit`` (items x ``copies``) per second and the time left at that rate."""
    bar = tqdm(batches, desc=desc, unit="batch", disable=None)  # disable=None: off where stderr is no terminal
    if not bar.disable:
        yield from bar
        return
    total = sum(len(batch) for batch in batches) * copies
    every = max(1, math.ceil(every_share * len(batches)))
    started = last = clock()
    done = 0
    for number, batch in enumerate(batches, start=1):
        yield batch  # the caller's work on it happens here, before the count below
        done += len(batch) * copies
        now = clock()
        if number == len(batches) or number % every == 0 or now - last >= every_s:
            rate = done / max(now - started, 1e-9)
            log.info("%s: batch %d/%d, %d/%d %s, %.2f %s/s, %s left", desc, number, len(batches), done, total, unit,
                     rate, unit, duration((total - done) / rate) if rate else "unknown time")
            last = now


def duration(seconds: float) -> str:
    """e.g. "45 s", "12.5 min", "2.1 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
