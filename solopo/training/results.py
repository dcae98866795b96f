"""results.json: what a run did, in one file per run directory; what a run must never write (secrets) or where it
must never write (outside its sweep directory, a directory it cannot write to)."""
from __future__ import annotations

import hashlib
import json
import math
import re
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from solopo.training.resume import refuse

from solopo.cache import atomic_write_text

# Keys such as api_key, WANDB_API_KEY, hf_token, token, secret; not "tokenizer" or "n_tokens".
SECRET_KEY = re.compile(r"(^|_)(api_?key|token|secret|password)$", re.IGNORECASE)


def redact(value: Any) -> Any:
    """The config with every value under a secret-looking key replaced, so results never leak keys."""
    if isinstance(value, Mapping):
        return {k: "***" if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def refuse_secrets(overrides: Sequence[str]) -> None:
    """Stops (exit 2) on a command-line override that sets a secret-looking key (SECRET_KEY, e.g.
    +model.extra.token=...). Called before Hydra starts: Hydra records every override in the run's .hydra/ folder
    and wandb the command line, in plain text, before any of solopo's code could redact them."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            refuse(f"{key}: secrets are not accepted on the command line (Hydra writes every override to the run "
                   "directory's .hydra/); set them in environment variables instead (WANDB_API_KEY, HF_TOKEN, ...)")


def refuse_unwritable(overrides: Sequence[str], cwd: Path = Path(".")) -> None:
    """Stops (exit 2) when the run or sweep directory (hydra.run.dir / hydra.sweep.dir, else Hydra's default under
    ``cwd``) cannot be written: the first existing folder on its path gets a probe file. Checked before Hydra writes
    .hydra/ there and before any model loads."""
    given = {k: v for k, _, v in (o.partition("=") for o in overrides) if k in ("hydra.run.dir", "hydra.sweep.dir")}
    for key, folder in given.items() or [("hydra.run.dir", str(Path(cwd) / "outputs"))]:
        existing = Path(folder).absolute()
        while not existing.exists():
            existing = existing.parent
        try:
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".solopo-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            refuse(f"{key}={folder}: cannot write to {existing} ({err.strerror or err})")


def safe_dirname(name: str, limit: int = 200) -> str:
    """``name`` as one folder name: characters other than A-Z a-z 0-9 . _ = , - become "_", and ".." becomes "_",
    so an override such as data.path=x/../../d never leads out of the sweep directory. Names over ``limit``
    characters are cut and end in a digest of the whole, so they stay distinct and within file-system limits."""
    safe = re.sub(r"[^A-Za-z0-9._=,-]", "_", name).replace("..", "_")
    if len(safe) > limit:
        safe = safe[:limit - 9] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


# conf/config.yaml names each job of a sweep with it: ${hydra.job.num}_${safe_dirname:${hydra.job.override_dirname}}
OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)


def final_metrics(callback_metrics: Mapping[str, Any]) -> dict[str, float]:
    """What was logged last under each name, as floats: for train/ losses and rewards the last epoch's means over its
    pairs (SoLoPOModule.on_train_epoch_end), for val/ the last validation's, and for step-only metrics (learning
    rate, gradient norm, memory) the last step's; train/tokens_per_s is the fit's mean (callbacks.Throughput)."""
    return {key: float(value) for key, value in sorted(callback_metrics.items())}


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / "results.json"
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=True) + "\n")
    return path


def all_finite(metrics: Mapping[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def summary(results: dict, path: Path) -> str:
    """The few lines printed at the end of a run: steps, pairs, sampling, the main metrics, skipped steps."""
    m, t = results["metrics"], results["timings"]
    keys = ["train/loss", "train/po_loss", "train/ra_loss", "train/rewards/accuracies", "val/loss",
            "val/rewards/accuracies", "val/rewards/margins", "val/ra/gap"]
    lines = [f"trained {results['steps']} steps on {results['data']['train']['pairs']} pairs ({results['device']}) "
             f"in {t['fit_s']:.1f}s, {t['train_tokens_per_s']:.0f} tokens/s"]
    for split, counts in results["data"].items():
        if "sampling" in counts:
            sampled = counts["sampling"]
            lines.append(f"  {split} pairs sampled on the {sampled['context']} context: {sampled['kept']} of "
                         f"{sampled['items']} questions kept, {100 * sampled['share_correct']:.1f}% of samples correct")
    lines += [f"  {k:<24} {m[k]:.4f}" for k in keys if k in m]
    if results["faults"]["skipped_steps"]:
        lines.append(f"  skipped {results['faults']['skipped_steps']} steps with a non-finite loss or gradient "
                     "(results.json: faults)")
    lines.append(f"results: {path}")
    return "\n".join(lines)
