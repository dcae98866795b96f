"""`python -m solopo.run` on the tiny model, as a subprocess (a fresh interpreter, signals, several processes) or in
this process (tests/in_process.py), and what its run directory holds; a toy Lightning module for the callbacks; a full
disk, as the atomic writer, Lightning's checkpoint writer, the run's log file and the writer of .hydra/ meet it; a
signal sent to this process as a function is called."""
import csv
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from in_process import run_here

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
# Every step's loss in metrics.csv; no progress bars in the captured output.
SMOKE = ["experiment=smoke", "logger=csv", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"]


def command(args) -> list[str]:
    return [sys.executable, "-m", "solopo.run", *SMOKE, *args]


def run(args, expect: int = 0, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command(args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == expect, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def smoke_here(args, expect: int = 0) -> subprocess.CompletedProcess:
    """`run` inside this process: the same command line and checks, without a new interpreter's imports."""
    return run_here([*SMOKE, *args], expect, cwd=ROOT)


def step_values(run_dir: Path, key: str) -> dict[int, float]:
    """A metric by step from the run's metrics.csv; a step logged twice keeps its last row."""
    rows = csv.DictReader(open(Path(run_dir) / "csv" / "version_0" / "metrics.csv"))
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


def step_losses(run_dir: Path) -> dict[int, float]:
    return step_values(run_dir, "train/loss")


def results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


class Toy(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch.float()[:, None]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_toy(tmp_path, max_steps: int, callbacks: list) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(Toy(), DataLoader(list(range(8)), batch_size=1))
    return trainer


class HalfFull:
    """A file open for writing on a disk that takes half of what is written, then reports itself full."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def full_disk(monkeypatch, only: str | None = None):
    """Files the atomic writer (solopo.cache.atomic_file) writes take half of what is written, then report a full disk:
    the files named ``only``, else every file of the run once it has begun; Hydra's files, written before it (.hydra/,
    a sweep's multirun.yaml: solopo.hydra_errors.write_whole), are written (full_disk_for_hydra fills the disk for
    them)."""
    real_open, real_fdopen, opened = os.open, os.fdopen, {}

    def named_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        opened[fd] = Path(path)
        return fd

    def full(tmp: Path) -> bool:  # a temporary name: .NAME.HOST.PID.RANDOM.tmp (solopo.cache.temporary_name)
        if only is not None:
            return tmp.name.startswith(f".{only}.")
        return tmp.parent.name != ".hydra" and not tmp.name.startswith(".multirun.yaml.")

    def fdopen(fd, mode, *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        return HalfFull(f) if full(opened.pop(fd, Path("unknown"))) else f

    monkeypatch.setattr("solopo.cache.os.open", named_open)
    monkeypatch.setattr("solopo.cache.os.fdopen", fdopen)


class FullAfter:
    """A log file on a disk that takes ``lines`` lines, then reports itself full."""

    def __init__(self, f, lines: int):
        self.f, self.lines = f, lines

    def write(self, text):
        if self.lines <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.lines -= 1
        return self.f.write(text)

    def __getattr__(self, name):  # flush, close, name: the file's
        return getattr(self.f, name)


def full_disk_for_the_log(monkeypatch, lines: int = 0):
    """The run's log file (run.log, evaluate.log; opened by logging's FileHandler) takes ``lines`` lines, then the disk
    is full."""
    real_open = logging.FileHandler._open

    def full_after(handler):
        f = real_open(handler)
        return FullAfter(f, lines) if Path(handler.baseFilename).name in ("run.log", "evaluate.log") else f

    monkeypatch.setattr(logging.FileHandler, "_open", full_after)


def full_disk_for_hydra(monkeypatch):
    """The files Hydra writes in the run folder's .hydra/ on a full disk: as Hydra's own writer opens them
    (hydra.core.utils._save_config) and as solopo writes them instead (solopo.hydra_errors.write_whole; config.yaml
    comes first)."""
    monkeypatch.setattr("hydra.core.utils.open", lambda path, mode, **kwargs: HalfFull(open(path, mode, **kwargs)),
                        raising=False)  # a name of the module's own, before the builtin, for Hydra's writer alone
    full_disk(monkeypatch, only="config.yaml")


def full_disk_move(src, dst):
    """shutil.move across file systems on a full disk: half of the file is copied, then the write fails. fsspec, which
    Lightning writes checkpoints through, moves its temporary file from /tmp into place this way."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[:len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(dst))


def full_disk_for_checkpoints(monkeypatch):
    monkeypatch.setattr(shutil, "move", full_disk_move)


def compose_config(overrides):
    """solopo's config with ``overrides``, composed as Hydra would (its hydra node too)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def signal_when_called(monkeypatch, owner, name, signum, only=lambda *args, **kwargs: True):
    """``owner.name`` sends ``signum`` to this process as it is called (where ``only`` holds), then runs."""
    original = getattr(owner, name)

    def sending(*args, **kwargs):
        if only(*args, **kwargs):
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, sending)
