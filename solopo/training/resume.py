"""Resuming a run where it stopped: the checkpoint file, the position in the data and the random state.

Lightning restores the weights, the optimizer, the LR scheduler, the global step and the loop counters. A shuffled
DataLoader would still restart its epoch from the first batch, in a new order, and Lightning keeps no RNG state in
checkpoints; the loader and the callbacks below fill those two gaps, so a resumed run trains on the batches the
uninterrupted run would have, with the same random draws.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler

from solopo.cache import writing
from solopo.preflight import stop
from solopo.settings.fields import ConfigError
from solopo.training.results import read_results, unfinished

log = logging.getLogger("solopo")

CHECKPOINT_DIR = "checkpoints"


def last_checkpoint(run_dir: Path) -> Path:
    """What ckpt_path=last names: <run dir>/checkpoints/last.ckpt (under trainer=fsdp a folder of shards)."""
    return Path(run_dir) / CHECKPOINT_DIR / "last.ckpt"


def resolve_ckpt_path(ckpt_path: Optional[str], run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from, or None to start from scratch. "last" is the run directory's last.ckpt when
    there is one: a requeued job passes ckpt_path=last from its first start on. A missing, truncated or foreign
    checkpoint stops the run in one line (solopo.preflight.stop) before any model loads."""
    if ckpt_path is None:
        return None
    path = last_checkpoint(run_dir) if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists() and ckpt_path == "last":
        log.warning("ckpt_path=last: no checkpoint at %s (a run stopped before its first save, or not this run's "
                    "hydra.run.dir); starting from scratch", path)
        return None
    if not path.exists():
        stop(f"ckpt_path={ckpt_path}: no such checkpoint file or folder")
    if problem := checkpoint_problem(path):
        stop(f"ckpt_path={ckpt_path}: {path} is not a usable checkpoint ({problem})")
    return path


def completed_results(ckpt_path: Optional[str], run_dir: Path) -> Optional[dict]:
    """The results of a run that completed in ``run_dir`` and kept no checkpoint, asked to go on (ckpt_path=last): a
    rerun of a sweep whose jobs were preempted resumes those and leaves the finished ones as they are, where it
    trained them again from scratch over their results. None where there is something to resume or nothing done."""
    if ckpt_path != "last" or last_checkpoint(run_dir).exists():
        return None
    results = read_results(run_dir)  # None: no whole record, the run did not complete
    whole = results is not None and isinstance(results.get("metrics"), dict)
    return results if whole and unfinished(results) is None else None  # preempted or stopped: resumed or redone


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file's contents, read with torch.load(weights_only=True) and memory-mapped: its tensors are not
    read, so the checks before a resume look into a checkpoint of many GB at once."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be resumed from, or None. A file must open with torch.load(weights_only=True) (memory-mapped:
    the tensors are not read) and hold Lightning's training state; a folder (trainer=fsdp) must hold torch's
    distributed-checkpoint metadata. Checkpoints are trusted input beyond that: a sharded folder's files are read by
    torch's own unpickling reader."""
    if path.is_dir():
        return None if (path / ".metadata").is_file() else "a folder without the .metadata of a sharded checkpoint"
    try:
        checkpoint = read_checkpoint(path)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a damaged file
        return f"truncated or not a torch checkpoint: {type(err).__name__}"
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step", "loops"} <= checkpoint.keys():
        return "no training state: not written by a solopo run"
    return None


def weights_problem(path: Path, policy: torch.nn.Module) -> Optional[str]:
    """Why the policy weights of the checkpoint at ``path`` do not fit ``policy``, or None: a checkpoint written with
    another model, size or LoRA setting, which Lightning's load (or, loading non-strictly beside a live reference,
    the optimizer's state) named in a traceback once the pairs, the reference and the base evaluation were done. A
    sharded folder (trainer=fsdp) is left to torch's reader."""
    if path.is_dir():
        return None
    saved = read_checkpoint(path)["state_dict"]
    saved = {key: tuple(value.shape) for key, value in saved.items() if key.startswith(POLICY)}
    here = {POLICY + key: tuple(value.shape) for key, value in policy.state_dict().items()}
    only_saved, only_here = sorted(saved.keys() - here.keys()), sorted(here.keys() - saved.keys())
    if only_saved or only_here:
        sides = [f"{len(keys)} {whose} (e.g. {keys[0]})" for keys, whose in (
            (only_saved, "of its tensors are not in this run's model"), (only_here, "of the model's are not in it"))
            if keys]
        found = " and ".join(sides)
    elif shapes := [key for key in here if here[key] != saved[key]]:
        found = f"{shapes[0]} is {list(saved[shapes[0]])} there and {list(here[shapes[0]])} in this run's model"
    else:
        return None
    return (f"holds another model's weights: {found}; resume with the model settings (model=..., model.lora, ...) "
            "of the run that wrote it")


def refuse_other_weights(given: str, path: Optional[Path], policy: torch.nn.Module) -> None:
    """Stops the run in one line naming ckpt_path (as ``given``) where the checkpoint at ``path`` holds another
    model's weights (weights_problem); before sampling and the reference pass, so that nothing is computed for it."""
    if path is not None and (problem := weights_problem(path, policy)):
        raise ConfigError(f"ckpt_path={given}: {path} {problem}")


POLICY = "policy."  # the prefix of the policy's weights in a checkpoint (SoLoPOModule.policy)


class LastCheckpoint(ModelCheckpoint):
    """Keeps one file, <run dir>/checkpoints/last.ckpt, written when training is stopped early (preemption, the NaN
    guard) so that the run can resume. Every checkpoint of the 135M default holds ~1.6 GB (weights and AdamW
    moments), so no history is kept, and a run that completes keeps none unless asked: ``keep`` (or periodic saves,
    every N steps or N minutes, not both) also writes it at the last step; without them a completed run removes the
    last.ckpt it resumed from once its results.json is written (remove_if_completed): until then a stop in the work
    after training leaves the checkpoint as it is, or writes it at this step, and a resumed run reads it again."""

    def __init__(self, run_dir: Path, every_n_steps: Optional[int] = None, every_n_minutes: Optional[float] = None,
                 keep: bool = False):
        self.keep = keep or bool(every_n_steps or every_n_minutes)
        super().__init__(dirpath=Path(run_dir) / CHECKPOINT_DIR, save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_steps,
                         train_time_interval=timedelta(minutes=every_n_minutes) if every_n_minutes else None,
                         every_n_epochs=None if self.keep else 0,  # 0: no save at the end of an epoch
                         enable_version_counter=False)  # a rerun in the same directory overwrites last.ckpt
        self._step_before_batch = -1  # the global step when the current batch began; -1: no batch in this fit
        self.completed = False  # the fit ended as planned, its last step needs no checkpoint (on_fit_end)

    def save_now(self, trainer: pl.Trainer) -> None:
        """Writes last.ckpt for the current step unless this step is saved already (or the run is a fast_dev_run,
        which leaves no checkpoint, as with Lightning's own). Every process calls it: a sharded one writes its shards.
        After the fit too (a run stopped in its final validation or evaluation): the resumed run trains no step."""
        if trainer.fast_dev_run:
            return
        if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Writes the checkpoint under a temporary name beside it, then renames it into place: a write that fails
        (a full disk, a killed job) leaves the previous last.ckpt whole, and is raised as a WriteFailed naming
        last.ckpt (the run stops in that one line). Every process writes its shards to the same temporary folder under
        a sharded strategy; one process renames it."""
        tmp = f"{filepath}.{trainer.strategy.broadcast(uuid.uuid4().hex[:8])}.tmp"
        try:
            with writing(Path(filepath)):
                super()._save_checkpoint(trainer, tmp)
                if trainer.is_global_zero:
                    replace_checkpoint(Path(tmp), Path(filepath))
        finally:
            if trainer.is_global_zero:
                remove_checkpoint(Path(tmp))
        self._last_checkpoint_saved = filepath

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        # Here, not in on_train_start, which a fit resumed at its last step never calls
        if trainer.is_global_zero:  # a write a kill cut short (kill -9 mid-save): a checkpoint's size, never read
            for stale in Path(self.dirpath).glob("last.ckpt.*.tmp"):
                remove_checkpoint(stale)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # A run resumed from this directory's last.ckpt does not write that step again (resuming a finished run
        # of a sweep would otherwise rewrite every job's checkpoint).
        self._last_global_step_saved = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        # Saved only after an optimizer step: between the micro-batches of gradient accumulation the gradients of the
        # batches already read would be lost, and the resumed run would skip them.
        if trainer.global_step == self._step_before_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # The last step (max_steps reached, or a stop asked for by preemption or the NaN guard) is saved here, before
        # Lightning closes the epoch: a checkpoint written after that resumes with a new epoch, so a run continued
        # with a larger trainer.max_steps would skip the rest of this one.
        if trainer.should_stop or (self.keep and 0 < trainer.max_steps <= trainer.global_step):
            self.save_now(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's own end-of-training save is skipped once a periodic save has happened, even at an earlier step.
        if self.keep or trainer.should_stop:
            self.save_now(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in on_train_end: a fit resumed at its last step (stopped after training) trains nothing and
        # Lightning calls no on_train_end. Resumed from this run's last.ckpt, which holds this step and is whole (the
        # fit just read it), a stop in the work after training keeps that file as it is: save_now writes nothing.
        own = Path(self.dirpath) / "last.ckpt"
        if self._step_before_batch == -1 and trainer.ckpt_path and Path(trainer.ckpt_path).resolve() == own.resolve():
            self._last_global_step_saved, self.last_model_path = trainer.global_step, str(own)
        self.completed = not (self.keep or trainer.should_stop)

    def remove_if_completed(self, trainer: pl.Trainer) -> None:
        """Once the results.json of a completed run is written: the last.ckpt it resumed from is no longer needed (a
        run that keeps none, after a fit that ended as planned). Before that, a run stopped in its final validation,
        evaluation or saving still resumes from it."""
        if not (self.completed and trainer.is_global_zero):
            return
        remove_checkpoint(Path(self.dirpath) / "last.ckpt")
        with contextlib.suppress(OSError):  # left in place when it holds anything else
            Path(self.dirpath).rmdir()


def replace_checkpoint(new: Path, path: Path) -> None:
    """Puts ``new`` (a file, or a folder of shards) at ``path``. A file replaces the old one atomically; a folder
    cannot replace a folder in one rename, so the old one is moved aside first and removed once the new one is in
    place (a crash in between leaves it as <path>.old)."""
    if new.is_dir() and path.exists():
        aside = path.with_name(path.name + ".old")
        remove_checkpoint(aside)
        os.replace(path, aside)
        os.replace(new, path)
        remove_checkpoint(aside)
    else:
        os.replace(new, path)


def remove_checkpoint(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_rank_and_world(context_parallel: int = 1) -> tuple[int, int]:
    """This process's batch group and the number of batch groups: the processes of a context group (consecutive
    ranks, solopo.training.distributed.context_mesh) train on the same pairs."""
    rank, world = rank_and_world()
    return rank // context_parallel, world // context_parallel


def shard_order(order: list[int], rank: int, world: int, batch_size: int) -> list[int]:
    """The items of ``order`` that rank ``rank`` of ``world`` trains on, ``batch_size`` per step. Global step g takes
    the g-th run of world * batch_size items of ``order``, and each rank its own slice of it, so a step sees the same
    pairs on any number of processes with the same global batch. Over several processes the last global batch is
    filled up from the start of ``order`` (as torch's DistributedSampler does), so every rank takes the same number
    of steps; one process keeps a short last batch."""
    if world == 1:
        return list(order)
    step = world * batch_size
    padded = list(order) + [order[i % len(order)] for i in range(-len(order) % step)]
    return [i for start in range(0, len(padded), step) for i in padded[start + rank * batch_size:start + (rank + 1) * batch_size]]


class EpochOrder(Sampler[int]):
    """The items of an epoch in an order fixed by (seed, epoch) (or in file order, shuffle=False), sharded across
    processes by global batch (shard_order). An interrupted run and its resumed run draw the same order; the next
    epoch it yields leaves out its first `skip` items (those the interrupted run trained on). The rank is read when
    iterating, once the process group exists, so the trainer does not swap in a sampler of its own
    (Trainer(use_distributed_sampler=False))."""

    def __init__(self, size: int, seed: int, batch_size: int = 1, shuffle: bool = True, context_parallel: int = 1):
        self.size, self.seed, self.batch_size, self.shuffle = size, seed, batch_size, shuffle
        self.context_parallel = context_parallel  # processes that share each batch (trainer.context_parallel)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it before every epoch
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle else np.arange(self.size)
        mine = shard_order(order.tolist(), *batch_rank_and_world(self.context_parallel), self.batch_size)
        skip, self.skip = self.skip, 0
        yield from mine[skip:]

    def __len__(self) -> int:
        world = batch_rank_and_world(self.context_parallel)[1]
        step = world * self.batch_size
        return self.size if world == 1 else -(-self.size // step) * self.batch_size


class ResumableLoader(DataLoader):
    """A DataLoader over EpochOrder that knows how far into its epoch it is (position) and can continue an epoch from
    such a position (resume_at), so a resumed run trains next on the batch the interrupted run would have; the
    LoaderPosition callback carries the position through checkpoints. Its own generator leaves the global RNG alone."""

    def __init__(self, dataset, seed: int, batch_size: int = 1, shuffle: bool = True, context_parallel: int = 1,
                 **kwargs):
        super().__init__(dataset, sampler=EpochOrder(len(dataset), seed, batch_size, shuffle, context_parallel),
                         batch_size=batch_size, generator=torch.Generator().manual_seed(seed), **kwargs)
        self._served = 0  # batches of the current epoch handed out
        self._resume: Optional[dict] = None  # the position a checkpoint recorded

    def __iter__(self):  # a generator: this runs at the first batch, once Lightning has set the epoch
        resume, self._resume = self._resume, None
        self._served = resume["batches"] if resume and resume["epoch"] == self.sampler.epoch else 0
        self.sampler.skip = self._served * self.batch_size
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def position(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def resume_at(self, position: dict) -> None:
        """The next epoch it iterates, if it is ``position``'s epoch, skips the batches that position has done."""
        self._resume = position


class LoaderPosition(pl.Callback):
    """Keeps the training loader's position in checkpoints, as this callback's state, and hands it back on resume.

    Not Lightning's route for a loader with state_dict / load_state_dict (the fit loop's state): Lightning hands that
    state over only when it sets the loader up after reading the checkpoint, and reading
    trainer.estimated_stepping_batches in configure_optimizers (SoLoPOModule, with optim.schedule_steps=null) sets it up
    before, so the resumed run trained its epoch again from the first batch (Lightning issue 20550). Callback states are
    restored before training starts under every strategy, and the loader reads its position only at its first batch.
    Every process restores rank 0's position, which every process shares (shard_order gives all the same steps)."""

    def __init__(self, loader: ResumableLoader):
        self.loader = loader

    def state_dict(self) -> dict:
        return self.loader.position()

    def load_state_dict(self, state: dict) -> None:
        self.loader.resume_at(state)


class RngState(pl.Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) random states in checkpoints and restores them on resume,
    so dropout draws what the uninterrupted run would have. Plain lists and tensors only: the checkpoint still
    loads with torch.load(weights_only=True)."""

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
