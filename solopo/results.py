"""results.json: what a run did, in one file per run directory."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

# Keys such as api_key, WANDB_API_KEY, hf_token, token, secret; not "tokenizer" or "n_tokens".
SECRET_KEY = re.compile(r"(^|_)(api_?key|token|secret|password)$", re.IGNORECASE)


def redact(value: Any) -> Any:
    """The config with every value under a secret-looking key replaced, so results never leak keys."""
    if isinstance(value, Mapping):
        return {k: "***" if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def final_metrics(callback_metrics: Mapping[str, Any]) -> dict[str, float]:
    """Epoch means of what was logged ('train/loss_epoch' -> 'train/loss'), without the per-step
    duplicates; step-only metrics (throughput, memory) keep their last value."""
    out = {}
    for key, value in callback_metrics.items():
        if key.endswith("_step"):
            continue
        out[key.removesuffix("_epoch")] = float(value)
    return dict(sorted(out.items()))


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: readers see the old file or the whole new one,
    never half of one (an interrupted run, a full disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / "results.json"
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=True) + "\n")
    return path


def all_finite(metrics: Mapping[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())
