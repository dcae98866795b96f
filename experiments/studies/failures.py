"""Why a job of the study failed, from its log, as the failed.json that `python -m solopo.report` shows.

failed.json: {"reason": a short label for tables, "detail": the line that says why, "returncode",
"log_tail": the last lines of the job's output, "config": the job's composed config (from Hydra's
.hydra/config.yaml, so the report can place the failure in its row)}.
"""
from __future__ import annotations

import re
from pathlib import Path

# (label, pattern of the line that says why), the first that matches wins.
REASONS = (
    ("no pairs", re.compile(r"no (training|validation) pairs: .*|no (train|val) pairs left.*")),  # the second: older runs
    # the caching allocator's OutOfMemoryError, or a CUDA call outside it that found no memory (torch.AcceleratorError:
    # CUDA error: out of memory), as jobs starting beside others on one GPU met it
    ("out of memory", re.compile(r".*(CUDA out of memory|OutOfMemoryError|CUDA error: out of memory).*")),
    ("non-finite steps", re.compile(r"training stopped at step .*")),
    ("preempted", re.compile(r"preempted \(SIG\w+\) at step .*")),
    ("interrupted", re.compile(r"interrupted \(SIG\w+\) at step .*")),  # Ctrl-C
    ("write failed", re.compile(r"could not write .*")),  # a full disk: solopo's own failed.json says the same
)
ERROR_LINE = re.compile(r"^\w+(\.\w+)*(Error|Exception|Exit): .*$", re.MULTILINE)
TAIL_LINES = 40


def classify(log: str, returncode: int) -> tuple[str, str]:
    """(reason, detail): a known cause, else the last exception line, else the exit status."""
    for label, pattern in REASONS:
        found = pattern.search(log)
        if found:
            return label, found.group(0).strip()
    errors = [m.group(0) for m in ERROR_LINE.finditer(log)]
    if errors:
        return errors[-1].split(":", 1)[0].rsplit(".", 1)[-1], errors[-1].strip()
    if returncode < 0:
        return f"killed by signal {-returncode}", ""
    return f"exit status {returncode}", ""


def job_config(run_dir: Path) -> dict:
    """The job's config as Hydra composed it, or {} when it never got that far. Its `${hydra:...}` interpolations
    (logger paths) are kept as written: only a Hydra app answers them, and in a process where one ran before (tests,
    a notebook) Hydra's resolver would answer with that app's paths."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    config = OmegaConf.create(path.read_text().replace("${hydra:", "\\${hydra:"))  # escaped: a literal string
    return OmegaConf.to_container(config, resolve=True)


def failure_record(log: str, returncode: int, run_dir: Path) -> dict:
    reason, detail = classify(log, returncode)
    return {"reason": reason, "detail": detail, "returncode": returncode,
            "log_tail": "\n".join(log.splitlines()[-TAIL_LINES:]), "config": job_config(run_dir)}
