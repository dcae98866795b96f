"""Checkpoints on disk: a failed write (a full disk) keeps the previous last.ckpt; a truncated, foreign or unreadable
checkpoint, and a run directory that cannot be written, stop the run in one line (exit 2) before any model loads."""
import json
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from solopo.cache import WriteFailed
from solopo.training.resume import LastCheckpoint, checkpoint_problem
from support import fit_toy, full_disk_for_checkpoints, smoke_here


class DiskFullFrom(pl.Callback):
    def __init__(self, step: int, monkeypatch):
        self.step, self.monkeypatch = step, monkeypatch

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            full_disk_for_checkpoints(self.monkeypatch)


def test_a_failed_write_keeps_the_previous_last_ckpt(tmp_path, monkeypatch):
    """Saved at step 2, then the disk fills: the save at step 4 fails, and last.ckpt still holds step 2, whole, with
    no temporary file left beside it. Before the fix, last.ckpt was left with half of step 4's checkpoint. The error
    names last.ckpt, not the temporary file that failed (the run stops with its line: test_full_disk)."""
    saved = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(WriteFailed) as failed:
        fit_toy(tmp_path, max_steps=4, callbacks=[DiskFullFrom(2, monkeypatch), LastCheckpoint(tmp_path, every_n_steps=2)])
    assert str(failed.value) == f"could not write {saved}: No space left on device"
    monkeypatch.undo()
    assert torch.load(saved, weights_only=True)["global_step"] == 2
    assert [p.name for p in saved.parent.iterdir()] == ["last.ckpt"] and checkpoint_problem(saved) is None


def test_a_write_a_kill_cut_short_is_removed_when_the_run_starts_again(tmp_path):
    """kill -9 during a save left last.ckpt.<random>.tmp at a checkpoint's full size (~1.6 GB for the default model),
    and the resumed run, finished, left it too."""
    stale = tmp_path / "checkpoints" / "last.ckpt.0badf00d.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"half a checkpoint")
    fit_toy(tmp_path, max_steps=1, callbacks=[LastCheckpoint(tmp_path)])
    assert not stale.exists()


def refused(args) -> str:
    """Runs solopo.run (in this process), expects exit code 2 and one line on stderr without a traceback; returns that
    line."""
    done = smoke_here(args, expect=2)
    assert "Traceback" not in done.stderr and "model " not in done.stdout, done.stderr[-2000:]  # before any model loads
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture
def saved_checkpoint(tmp_path) -> Path:
    fit_toy(tmp_path / "toy", max_steps=1, callbacks=[LastCheckpoint(tmp_path / "toy", keep=True)])
    return tmp_path / "toy" / "checkpoints" / "last.ckpt"


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path, saved_checkpoint):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(saved_checkpoint.read_bytes()[:1000])
    line = refused([f"ckpt_path={truncated}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert line.startswith(f"error: ckpt_path={truncated}: {truncated} is not a usable checkpoint (truncated or not a "
                           "torch checkpoint")


def test_a_foreign_last_ckpt_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_text("not a checkpoint\n")
    line = refused(["ckpt_path=last", f"hydra.run.dir={run_dir}"])
    assert line.startswith(f"error: ckpt_path=last: {run_dir / 'checkpoints' / 'last.ckpt'} is not a usable checkpoint")


def test_checkpoints_are_read_with_weights_only(tmp_path, saved_checkpoint):
    """A checkpoint that would run code when unpickled (any object beyond tensors and plain containers) is refused;
    one without Lightning's training state is not taken for a checkpoint."""
    pickled = tmp_path / "pickled.ckpt"
    torch.save({**torch.load(saved_checkpoint, weights_only=True), "extra": Path("x")}, pickled)
    assert "truncated or not a torch checkpoint: UnpicklingError" == checkpoint_problem(pickled)
    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {}}, weights)
    assert checkpoint_problem(weights) == "no training state: not written by a solopo run"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_run_directory_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    line = refused([f"hydra.run.dir={folder / 'run'}"])
    assert line == f"error: hydra.run.dir={folder / 'run'}: cannot write to {folder} (Permission denied)"


def test_a_run_directory_on_a_read_only_file_system_is_refused_in_one_line():
    """/proc takes no new files, not even from root."""
    assert refused(["hydra.run.dir=/proc/solopo/run"]).startswith("error: hydra.run.dir=/proc/solopo/run: cannot write "
                                                                   "to /proc (")


def test_resuming_a_completed_run_that_kept_no_checkpoint_keeps_its_results(tmp_path):
    """ckpt_path=last on a run that completed (results.json, no last.ckpt: checkpoint.keep=false) trained it again from
    scratch over its results, after a warning that blamed the run directory; a rerun of a sweep did so for every
    finished job. Now its results stand; a run stopped by its faults, a damaged record, a checkpoint to resume from or
    no record (a requeued job's first start) still go on."""
    from solopo.training.resume import completed_results

    record = {"metrics": {"val/loss": 0.5}, "faults": {"stopped": None}}
    assert completed_results("last", tmp_path) is None
    (tmp_path / "results.json").write_text(json.dumps(record))
    assert completed_results("last", tmp_path) == record and completed_results(None, tmp_path) is None
    for damaged in ('{"metrics": {"val/loss"', json.dumps({**record, "faults": {"stopped": "3 bad steps"}}), "[]",
                    json.dumps({**record, "preempted": {"signal": "SIGTERM", "step": 3, "checkpoint": None}})):
        (tmp_path / "results.json").write_text(damaged)
        assert completed_results("last", tmp_path) is None
    (tmp_path / "results.json").write_text(json.dumps(record))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert completed_results("last", tmp_path) is None


def test_a_checkpoint_of_another_model_is_named_in_one_line(tmp_path):
    """Resumed with another model size or LoRA setting, a run sampled its pairs, computed the reference and evaluated
    the base model, and then Lightning's load failed in a traceback (exit 1): it stops once the model has loaded, in
    one line naming the checkpoint and a tensor that does not fit."""
    from solopo.training.resume import weights_problem

    small, path = torch.nn.Linear(2, 3), tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"policy.{k}": v for k, v in small.state_dict().items()}, "global_step": 1,
                "loops": {}}, path)
    assert weights_problem(path, small) is None
    assert weights_problem(path, torch.nn.Linear(2, 4)).startswith(
        "holds another model's weights: policy.weight is [3, 2] there and [4, 2] in this run's model; resume with the "
        "model settings")
    assert weights_problem(path, torch.nn.Sequential(small)).startswith(
        "holds another model's weights: 2 of its tensors are not in this run's model (e.g. policy.bias) and 2 of the "
        "model's are not in it (e.g. policy.0.bias)")
    from conftest import TINY
    from solopo.models.loading import load_model, load_tokenizer

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)  # what a smoke run of the tiny model keeps, its policy's weights
    weights = load_model(TINY, load_tokenizer(TINY)).state_dict()
    torch.save({"state_dict": {f"policy.{k}": v for k, v in weights.items()}, "global_step": 1, "loops": {}},
               run_dir / "checkpoints" / "last.ckpt")
    done = smoke_here(["eval.enabled=false", "ckpt_path=last", "model.random_init.hidden_size=32",
                       f"hydra.run.dir={run_dir}"], expect=2)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path=last: {run_dir / 'checkpoints' / 'last.ckpt'} holds another model's weights: "
        "policy.model.embed_tokens.weight is [49152, 64] there and [49152, 32] in this run's model; resume with the "
        "model settings (model=..., model.lora, ...) of the run that wrote it")


def test_a_checkpoint_trained_under_other_settings_is_refused_in_one_line(tmp_path):
    """Resumed as SimPO, a run stopped as DPO went on without a word: results.json reported SimPO for a model trained
    partly as DPO, and metrics.csv mixed the two losses. Each checkpoint holds the settings that decide what is
    trained; resumed with others, the run stops in one line naming them, before any model loads. Training longer
    (trainer.max_steps) is a resume like any other."""
    run_dir = tmp_path / "run"
    smoke_here(["eval.enabled=false", "algo=dpo", "trainer.max_steps=1", "checkpoint.keep=true",
                f"hydra.run.dir={run_dir}"])
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    done = smoke_here(["eval.enabled=false", "algo=simpo", "trainer.max_steps=2", "ckpt_path=last",
                       f"hydra.run.dir={run_dir}"], expect=2)
    assert "Traceback" not in done.stderr and "resuming from" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path=last: {checkpoint} was written by a run with other settings: algo._target_ is "
        '"solopo.core.algos.DPO" there and "solopo.core.algos.SimPO" here (and 2 more: algo.beta, algo.gamma); resume '
        "with the settings of the run that wrote it, or train anew in another hydra.run.dir")
    done = smoke_here(["eval.enabled=false", "algo=dpo", "trainer.max_steps=2", "checkpoint.keep=true",
                       "model.gradient_checkpointing=false", "ckpt_path=last", f"hydra.run.dir={run_dir}"])
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 2


def test_a_checkpoint_without_a_settings_record_resumes_as_before(tmp_path):
    from solopo.training.run_settings import KEY, settings_problem

    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "loops": {}}, path)
    assert settings_problem(path, {"ra.alpha": "1.0"}) is None
    torch.save({"state_dict": {}, "global_step": 1, "loops": {}, KEY: {"ra.alpha": "1.0", "seed": "0"}}, path)
    assert settings_problem(path, {"ra.alpha": "1.0", "seed": "0"}) is None
    assert settings_problem(path, {"ra.alpha": "0.3", "seed": "0"}).startswith(
        "was written by a run with other settings: ra.alpha is 1.0 there and 0.3 here; resume")
    assert "seed is 0 there and unset here" in settings_problem(path, {"ra.alpha": "1.0"})
