"""One process of the shared-cache test (test_caches.py), spawned: it imports solopo.cache alone, so it starts fast."""
import json
import logging
import os
import time
from pathlib import Path

from solopo.cache import DiskCache

ROWS = list(range(5000))  # a payload large enough that writing it takes a while


def ask_for_one_entry(rank: int, roots: list[str], barrier, out: str) -> None:
    """For each fresh cache folder in ``roots``, at the same moment as the other processes: get_or_compute one entry
    (each computation is recorded in computed.log), then write that same entry 10 times (no lock: the writers race
    on the rename). Writes what get_or_compute returned, and every warning the cache logged, to ``out``."""
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("solopo.cache").addHandler(handler)
    values = []
    for root in roots:
        cache = DiskCache(Path(root), "reference")

        def compute():
            with open(Path(root) / "computed.log", "a") as log:
                log.write(f"{rank}\n")
            time.sleep(0.1)  # the others arrive while this one computes
            return {"rank": rank, "rows": ROWS}

        barrier.wait()
        values.append(cache.get_or_compute("entry", compute))
        barrier.wait()
        for _ in range(10):
            cache.put("entry", {"rank": rank, "rows": ROWS}, {"pid": os.getpid()})
    Path(out).write_text(json.dumps({"values": values, "warnings": warnings}))
