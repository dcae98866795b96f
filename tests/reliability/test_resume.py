"""A run stopped and resumed with ckpt_path=last trains on the same batches, with the same random draws and the same
LR schedule, as the run that was never stopped; its loggers continue where it left off."""
import csv
import os
import signal
import warnings

import pytest
import pytorch_lightning as pl
import torch

from solopo.training.callbacks import Preemption
from solopo.training.loggers import ResumableCSVLogger, wandb_logger
from solopo.training.resume import LastCheckpoint, LoaderPosition, ResumableLoader, RngState
from support import Toy, fit_toy, results, run, step_losses


class SignalAtBatch(pl.Callback):
    """Sends SIGTERM to this process during the n-th micro-batch (1-based) of the run."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def on_train_batch_start(self, *args):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGTERM)


def whole_and_resumed(tmp_path, overrides):
    """The per-step losses of a 6-step run, and of the same run stopped after step 3 and resumed in its directory.
    optim.schedule_steps keeps the LR schedule 6 steps long in the run that stops at 3; checkpoint.keep keeps the
    completed first part's last.ckpt."""
    common = ["optim.schedule_steps=6", "checkpoint.keep=true", *overrides]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run([*common, "trainer.max_steps=6", f"hydra.run.dir={whole}"])
    run([*common, "trainer.max_steps=3", f"hydra.run.dir={parts}"])
    run([*common, "trainer.max_steps=6", "ckpt_path=last", f"hydra.run.dir={parts}"])
    return whole, parts


@pytest.mark.slow  # about 40 s; the default run keeps the mid-epoch SIGTERM resume (test_preemption.py)
def test_resumed_run_logs_the_losses_of_the_uninterrupted_one(tmp_path):
    whole, parts = whole_and_resumed(tmp_path, ["data.source.n_train=6"])
    expected = step_losses(whole)
    assert sorted(expected) == list(range(6))
    assert step_losses(parts) == pytest.approx(expected, rel=1e-6)  # one metrics.csv, steps 0-2 then 3-5 appended
    resumed = results(parts)
    assert resumed["steps"] == 6 and resumed["resumed_from"] == str(parts / "checkpoints" / "last.ckpt")


@pytest.mark.slow  # long CPU test: pytest -m slow
def test_resume_across_epochs_with_dropout_and_a_live_reference(tmp_path):
    """4 pairs an epoch: the resumed run finishes epoch 0, then draws epoch 1's order. Dropout makes every loss
    depend on the restored RNG state; the frozen reference stays out of the checkpoint and is not missed on loading."""
    whole, parts = whole_and_resumed(tmp_path, ["data.source.n_train=4", "trainer.max_epochs=2", "algo=dpo",
                                                "reference=live", "+model.random_init.attention_dropout=0.1"])
    expected = step_losses(whole)
    assert sorted(expected) == list(range(6))
    assert step_losses(parts) == pytest.approx(expected, rel=1e-6)
    checkpoint = torch.load(parts / "checkpoints" / "last.ckpt", weights_only=True)  # plain tensors and lists only
    assert checkpoint["global_step"] == 6 and not [k for k in checkpoint["state_dict"] if k.startswith("reference.")]


def test_periodic_checkpoints_rewrite_one_file_and_the_last_step_is_saved(tmp_path):
    class Saved(pl.Callback):  # runs before LastCheckpoint, which Lightning puts last: sees the previous save
        def __init__(self):
            self.steps = []

        def on_train_batch_end(self, trainer, *args):
            path = tmp_path / "checkpoints" / "last.ckpt"
            self.steps.append(torch.load(path, weights_only=True)["global_step"] if path.exists() else None)

    saved = Saved()
    fit_toy(tmp_path, max_steps=5, callbacks=[saved, LastCheckpoint(tmp_path, every_n_steps=2)])
    assert saved.steps == [None, None, 2, 2, 4]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_wandb_logger_of_a_resumed_run_continues_its_run(tmp_path):
    first = wandb_logger("solopo", str(tmp_path), mode="offline")
    resumed = wandb_logger("solopo", str(tmp_path), mode="offline", resume=True)
    fresh = wandb_logger("solopo", str(tmp_path), mode="offline")
    assert first.version == resumed.version != fresh.version
    assert (tmp_path / "wandb_run_id").read_text().strip() == fresh.version


def test_csv_logger_of_a_resumed_run_appends(tmp_path):
    def log(step, resume=False, **metrics):
        logger = ResumableCSVLogger(str(tmp_path), resume=resume)
        logger.log_metrics(metrics, step=step)
        logger.save()

    def rows():
        return [(r["step"], r["a"], r.get("b", "")) for r in csv.DictReader(open(tmp_path / "csv/version_0/metrics.csv"))]

    log(0, a=1.0)
    log(1, resume=True, a=2.0, b=3.0)
    assert rows() == [("0", "1.0", ""), ("1", "2.0", "3.0")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning warns that it replaces the old metrics.csv
        log(0, a=4.0)
    assert rows() == [("0", "4.0", "")]


class Recorder(Toy):
    """The toy model with dropout-free per-step losses recorded by global step (micro-batches of a step summed). Like
    SoLoPOModule with optim.schedule_steps=null, it reads trainer.estimated_stepping_batches while its optimizer is
    set up, which makes Lightning set up the train loader before the checkpoint's loop state is read."""

    def __init__(self):
        super().__init__()
        self.losses: dict[int, float] = {}
        self.scheduled_steps = None

    def configure_optimizers(self):
        self.scheduled_steps = self.trainer.estimated_stepping_batches
        return super().configure_optimizers()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses[self.trainer.global_step] = self.losses.get(self.trainer.global_step, 0.0) + loss.item()
        return loss


def fit_recorded(run_dir, callbacks, ckpt_path=None) -> dict[int, float]:
    """12 optimizer steps of 2 micro-batches over an epoch of 10 shuffled items, so the run crosses epochs and an
    epoch ends mid-accumulation."""
    torch.manual_seed(0)  # the same initial weights in every run (a resumed run loads its own)
    module, loader = Recorder(), ResumableLoader(list(range(10)), seed=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=12, max_epochs=3, accumulate_grad_batches=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir,
                         use_distributed_sampler=False, callbacks=[*callbacks, RngState(), LoaderPosition(loader)])
    trainer.fit(module, loader, ckpt_path=ckpt_path, weights_only=True)
    assert module.scheduled_steps == 12
    return module.losses


# LoaderPosition restores the loader's position, which Lightning's mid-epoch check looks for in the loader itself
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
@pytest.mark.parametrize("micro_batch", [3, 4], ids=["signal mid-accumulation", "signal at a step's last micro-batch"])
def test_preempted_mid_epoch_with_accumulation_resumes_bitwise(micro_batch, tmp_path):
    """SIGTERM during micro-batch 3 (of step 1) or 4: training stops after step 1's optimizer update (micro-batch 4),
    never between micro-batches, and the resumed run's per-step losses equal the uninterrupted run's exactly. Before
    the fix a stop after micro-batch 3 lost its gradient and every later loss differed; before LoaderPosition, the
    Recorder's reading estimated_stepping_batches made the resumed run start its epoch again from the first batch."""
    whole = fit_recorded(tmp_path / "whole", [])
    preemption = Preemption()
    first = fit_recorded(tmp_path, [SignalAtBatch(micro_batch), preemption, LastCheckpoint(tmp_path)])
    assert preemption.received == signal.SIGTERM and sorted(first) == [0, 1]
    resumed = fit_recorded(tmp_path, [LastCheckpoint(tmp_path)], ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert {**first, **resumed} == whole and sorted(resumed) == list(range(2, 12))
