"""SIGTERM or SIGUSR1 (a scheduler's notice) and a first Ctrl-C stop training after the current step, write last.ckpt,
say how to resume, and exit with 128 + the signal number; the resumed run continues from the saved step. After
training, until results.json is written, one process stops at once with a checkpoint of its last step, and the
resumed run only validates and evaluates."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from solopo.eval.runner import Evaluation
from solopo.training.callbacks import Preemption
from solopo.training.module import SoLoPOModule
from solopo.training.results import TRAINING_TIMINGS, recorded_training, with_earlier_fits, with_recorded_training
from solopo.training.resume import LastCheckpoint
from support import ENV, ROOT, command, fit_toy, results, run, signal_when_called, smoke_here, step_losses

LONG_RUN = ["trainer.max_steps=200", "trainer.max_epochs=10", "data.source.n_train=40"]


def wait_for(path, text, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared:\n{path.read_text(errors='replace')[-3000:]}")


def sigterm_once(output, overrides, text: str) -> None:
    """Runs solopo with ``overrides``, its output into ``output``; SIGTERM once ``text`` appears there, then the exit
    status of a preempted run."""
    with open(output, "w") as out:
        proc = subprocess.Popen(command(overrides), cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(output, text, proc)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        finally:
            proc.kill()


@pytest.mark.slow  # about 30 s; the default run keeps the mid-epoch SIGTERM test, which writes and resumes too
def test_sigterm_writes_last_ckpt_and_the_run_resumes_from_it(tmp_path):
    run_dir, output = tmp_path / "run", tmp_path / "output.txt"
    # off a terminal, a progress line every 10 steps shows that training has begun
    sigterm_once(output, [*LONG_RUN, "trainer.enable_progress_bar=true", f"hydra.run.dir={run_dir}"], "step 10/")
    text = output.read_text(errors="replace")
    found = re.search(r"preempted \(SIGTERM\) at step (\d+): checkpoint written to (\S+); "
                      r"resume by rerunning the command with ckpt_path=last hydra\.run\.dir=(\S+)", text)
    assert found, text[-3000:]
    step = int(found[1])
    assert found[2] == str(run_dir / "checkpoints" / "last.ckpt") and found[3] == str(run_dir)
    assert 1 <= step < 200 and "Traceback" not in text
    assert torch.load(found[2], weights_only=False)["global_step"] == step
    assert results(run_dir)["preempted"] == {"signal": "SIGTERM", "step": step, "checkpoint": found[2],
                                             "after_training": False}

    done = run([*LONG_RUN, "ckpt_path=last", f"trainer.max_steps={step + 2}", f"hydra.run.dir={run_dir}"])
    assert f"resuming from {found[2]}" in done.stdout
    assert results(run_dir)["steps"] == step + 2 and "preempted" not in results(run_dir)
    assert sorted(step_losses(run_dir)) == list(range(step + 2))  # the resumed steps appended to the same csv


class SignalAt(pl.Callback):
    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:  # arrives during that step
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT], ids=["SIGUSR1", "SIGTERM", "SIGINT"])
def test_a_signal_stops_after_the_current_step_with_a_checkpoint(signum, tmp_path):
    """SIGINT (Ctrl-C) too: before, it raised KeyboardInterrupt in the step, and Lightning exited with status 1 and no
    checkpoint."""
    before = signal.getsignal(signum)
    preemption = Preemption()
    trainer = fit_toy(tmp_path, max_steps=8, callbacks=[SignalAt(2, signum), preemption, LastCheckpoint(tmp_path)])
    assert preemption.received == signum and preemption.stopped == "training" and trainer.global_step == 2
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert signal.getsignal(signum) == before  # handlers are put back when training ends


def test_a_second_ctrl_c_aborts_at_once_without_a_checkpoint(tmp_path):
    class TwiceAt(SignalAt):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step + 1 == self.step:
                os.kill(os.getpid(), self.signum)
                os.kill(os.getpid(), self.signum)

    with pytest.raises(SystemExit) as stop:  # Lightning's answer to KeyboardInterrupt: teardown, then status 1
        fit_toy(tmp_path, max_steps=8, callbacks=[TwiceAt(2, signal.SIGINT), Preemption(), LastCheckpoint(tmp_path)])
    assert stop.value.code == 1 and not (tmp_path / "checkpoints" / "last.ckpt").exists()


# 12 steps over epochs of 8 batches (16 with accumulation 2); every step's row written to metrics.csv at once.
# optim.schedule_steps stays at its default: the LR schedule spans the fit's steps, which configure_optimizers asks
# Lightning for, so the train loader is set up before the checkpoint is read (the case that once restarted the epoch:
# solopo.training.resume.LoaderPosition).
EXACT = ["eval.enabled=false", "data.source.n_train=8", "trainer.max_epochs=10", "trainer.max_steps=12",
         "+logger.flush_logs_every_n_steps=1"]


def interrupted(run_dir, overrides, stop, steps_done: int = 3) -> int:
    """Starts a 12-step run and stops it with ``stop``: a signal sent once metrics.csv holds ``steps_done`` rows (one a
    step, each written at once), or SIGKILL right after the first periodic checkpoint appears. Returns the step
    last.ckpt holds."""
    output, checkpoint = run_dir.parent / f"{run_dir.name}.txt", run_dir / "checkpoints" / "last.ckpt"
    metrics = run_dir / "csv" / "version_0" / "metrics.csv"
    with open(output, "w") as out:
        proc = subprocess.Popen(command([*overrides, f"hydra.run.dir={run_dir}"]),
                                cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        def ready() -> bool:
            if stop == signal.SIGKILL:
                return checkpoint.exists()
            return metrics.exists() and metrics.read_text().count("\n") > steps_done  # the header, then the rows

        try:
            while proc.poll() is None and not ready():
                time.sleep(0.02)
            proc.send_signal(stop)
            code = proc.wait(timeout=120)
            assert code == -stop if stop == signal.SIGKILL else code == 128 + stop, \
                output.read_text(errors="replace")[-3000:]
        finally:
            proc.kill()
    return saved_step(checkpoint)


def saved_step(checkpoint) -> int:
    """The global step a last.ckpt holds: one file, or under trainer=fsdp a folder of shards whose meta.pt holds it."""
    return torch.load(checkpoint / "meta.pt" if checkpoint.is_dir() else checkpoint, weights_only=True)["global_step"]


def assert_resumes_exactly(tmp_path, overrides, stop, steps_done: int = 3):
    """The per-step losses of the interrupted-and-resumed run equal the uninterrupted run's, bitwise (CPU)."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run([*EXACT, *overrides, f"hydra.run.dir={whole}"])
    step = interrupted(parts, [*EXACT, *overrides], stop, steps_done)
    assert 1 <= step < 12
    run([*EXACT, *overrides, "ckpt_path=last", f"hydra.run.dir={parts}"])
    expected, got = step_losses(whole), step_losses(parts)  # after kill -9, unflushed rows of the first part are lost
    assert sorted(expected) == list(range(12)) and set(range(step, 12)) <= set(got)
    assert got == {s: expected[s] for s in got}


@pytest.mark.slow  # three runs in fresh processes (~40 s); the default run resumes mid-epoch in-process (Ctrl-C below)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_mid_epoch_then_resume_gives_the_uninterrupted_losses(stop, tmp_path):
    """Before the fix, the resumed run trained the epoch again from its first batch (with the default
    optim.schedule_steps), and every later loss differed."""
    assert_resumes_exactly(tmp_path, [], stop)


@pytest.mark.slow
def test_kill_9_after_a_periodic_checkpoint_then_resume_gives_the_uninterrupted_losses(tmp_path):
    assert_resumes_exactly(tmp_path, ["checkpoint.every_n_steps=5"], signal.SIGKILL)


@pytest.mark.slow
def test_signal_with_gradient_accumulation_then_resume_gives_the_uninterrupted_losses(tmp_path):
    """The signal arrives after step 2, during the micro-batches of a later step: the run stops after that step."""
    assert_resumes_exactly(tmp_path, ["data.source.n_train=16", "trainer.accumulate_grad_batches=2"], signal.SIGTERM,
                           steps_done=2)


AFTER_TRAINING = {  # where a signal lands after the last step: the final validation (inside Lightning's validate), the
    # trained model's evaluation (outside Lightning)
    "validation": (SoLoPOModule, "validation_step", lambda *args, **kwargs: True),
    "evaluation": (Evaluation, "__call__", lambda self, model, name, **kwargs: name == "trained"),
}
TIMES = ("tokens_per_s", "step_time_s", "peak_mem_gib")  # the process's own: differ between any two runs


def comparable(record: dict) -> dict:
    """What a run's results.json says about the model: its metrics (timings aside), steps, the tokens it trained on,
    faults and evaluation."""
    metrics = {key: value for key, value in record["metrics"].items() if not key.endswith(TIMES)}
    return {"metrics": metrics, "train_tokens": record["timings"]["train_tokens"],
            **{key: record.get(key) for key in ("steps", "faults", "eval_curve", "data", "eval", "eval_summary",
                                                "eval_changes")}}


def training(record: dict) -> dict:
    """The training figures of a run's results.json, timings included: one run's, which no other run repeats."""
    timings = record["timings"]
    return {"metrics": {key: value for key, value in record["metrics"].items() if key.startswith("train/")},
            "timings": {key: timings[key] for key in TRAINING_TIMINGS}, "stage": timings["stages"]["training"]}


def file_identity(path: Path) -> tuple[int, int]:
    """A file rewritten in place of itself (written beside it, then renamed over it) has another inode."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.mark.parametrize("where", AFTER_TRAINING)
def test_sigterm_after_training_leaves_a_checkpoint_and_the_resumed_run_only_evaluates(where, tmp_path, monkeypatch,
                                                                                      signal_guard):
    """Before the fix, SIGTERM in the final validation ended the run with status 0 (Lightning's SIGTERMException), and
    in the evaluation with SIGTERM's default: no checkpoint, no record. The resumed run trains no step and writes what
    the uninterrupted run wrote, its training figures (tokens, seconds, throughput) those of the run that trained:
    before, 0 tokens and its own fit's seconds. Preempted again in its own validation or evaluation, it leaves the
    checkpoint it resumed from as it is: before, it had removed it as its fit ended, and wrote it again."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    smoke_here([f"hydra.run.dir={whole}"])
    with monkeypatch.context() as patch:
        signal_when_called(patch, *AFTER_TRAINING[where][:2], signal.SIGTERM, AFTER_TRAINING[where][2])
        stopped = smoke_here([f"hydra.run.dir={parts}"], expect=128 + signal.SIGTERM)
        checkpoint = parts / "checkpoints" / "last.ckpt"
        line = f"preempted (SIGTERM) at step 4, after training: checkpoint written to {checkpoint}"
        assert line in stopped.stdout + stopped.stderr and saved_step(checkpoint) == 4
        first = results(parts)
        assert first["preempted"] == {"signal": "SIGTERM", "step": 4, "checkpoint": str(checkpoint),
                                      "after_training": True}
        rows, written = len(step_losses(parts)), file_identity(checkpoint)
        # preempted again in the resumed run's own validation or evaluation: the checkpoint stays as it was
        again = smoke_here(["ckpt_path=last", f"hydra.run.dir={parts}"], expect=128 + signal.SIGTERM)
        assert line in again.stdout + again.stderr and file_identity(checkpoint) == written
        assert results(parts)["preempted"] == first["preempted"] and training(results(parts)) == training(first)

    resumed = smoke_here(["ckpt_path=last", f"hydra.run.dir={parts}"])
    assert f"resuming from {checkpoint}" in resumed.stdout + resumed.stderr
    done, whole_record = results(parts), results(whole)
    assert len(step_losses(parts)) == rows  # no step trained again
    assert "preempted" not in done and not checkpoint.exists() and not checkpoint.parent.exists()
    assert comparable(done) == comparable(whole_record) and whole_record["timings"]["train_tokens"] > 0
    assert training(done) == training(first)  # the figures of the run that trained, its seconds and rates too
    timings = done["timings"]
    assert timings["total_s"] == pytest.approx(sum(timings[key] for key in ("model_s", "data_s", "fit_s", "validate_s")))


@pytest.mark.slow  # about 40 s; the default run sends the signal from inside the run (the test above)
def test_sigterm_during_the_evaluation_of_a_fresh_process_then_the_resumed_run_only_evaluates(tmp_path):
    """A fresh interpreter, its handlers Python's own: SIGTERM once the trained model's evaluation (9 batches, about
    3 s on CPU) has begun."""
    run_dir, output = tmp_path / "run", tmp_path / "output.txt"
    args = ["data.source.n_val=24", "eval.n_items=24", "eval.max_new_tokens=32", f"hydra.run.dir={run_dir}"]
    sigterm_once(output, args, "evaluating trained: batch 1/9")
    text, checkpoint = output.read_text(errors="replace"), run_dir / "checkpoints" / "last.ckpt"
    assert f"preempted (SIGTERM) at step 4, after training: checkpoint written to {checkpoint}" in text, text[-3000:]
    assert "Traceback" not in text and "batch 9/9" not in text and saved_step(checkpoint) == 4
    assert results(run_dir)["preempted"]["after_training"] is True

    stopped = results(run_dir)
    done = run([*args, "ckpt_path=last"])
    assert "evaluating trained: batch 9/9" in done.stdout and not checkpoint.exists()
    record = results(run_dir)
    assert "preempted" not in record and record["steps"] == 4
    assert training(record) == training(stopped) and record["timings"]["train_tokens"] > 0  # the stopped run's
    assert set(record["eval"]) == {"base", "trained"} and "train/loss" in record["metrics"]


def test_ctrl_c_stops_the_run_with_a_checkpoint_and_it_resumes_with_the_uninterrupted_losses_and_tokens(
        tmp_path, monkeypatch, signal_guard):
    """The first Ctrl-C: the step finishes, last.ckpt is written, results.json records it, status 130 (128 + SIGINT);
    the resumed run logs the losses of the run never stopped, and reports the whole training: the tokens of all 6
    steps, the stopped fit's seconds added to its own, their rate. Before, KeyboardInterrupt ended it with status 1 and
    nothing to resume from; then the resumed run reported only the tokens and seconds since the resume."""
    whole, parts, six = tmp_path / "whole", tmp_path / "parts", [*EXACT, "trainer.max_steps=6"]
    smoke_here([*six, f"hydra.run.dir={whole}"])
    with monkeypatch.context() as patch:
        signal_when_called(patch, SoLoPOModule, "training_step", signal.SIGINT,
                           only=lambda module, batch, batch_idx: module.trainer.global_step == 2)
        stopped = smoke_here([*six, f"hydra.run.dir={parts}"], expect=128 + signal.SIGINT)
    checkpoint = parts / "checkpoints" / "last.ckpt"
    assert f"interrupted (SIGINT) at step 3: checkpoint written to {checkpoint}" in stopped.stdout + stopped.stderr
    assert saved_step(checkpoint) == 3
    first = results(parts)
    assert first["preempted"] == {"signal": "SIGINT", "step": 3, "checkpoint": str(checkpoint),
                                  "after_training": False}
    smoke_here([*six, "ckpt_path=last", f"hydra.run.dir={parts}"])
    expected = step_losses(whole)
    assert sorted(expected) == list(range(6)) and step_losses(parts) == expected
    done, timings = results(parts), results(parts)["timings"]
    assert 0 < first["timings"]["train_tokens"] < timings["train_tokens"] == results(whole)["timings"]["train_tokens"]
    assert timings["fit_s"] >= first["timings"]["fit_s"]
    assert timings["stages"]["training"]["s"] >= first["timings"]["stages"]["training"]["s"]
    assert done["metrics"]["train/tokens_per_s"] == pytest.approx(timings["train_tokens_per_s"])
    assert timings["total_s"] == pytest.approx(sum(timings[key] for key in ("model_s", "data_s", "fit_s", "validate_s")))


def test_a_run_resumed_after_training_takes_its_training_however_the_checkpoint_is_named(tmp_path, monkeypatch):
    """ckpt_path=last, or the checkpoint's path as the shell gives it (relative here): the same file, so the resumed
    run reports the training its stopped run recorded (train/ metrics; the fit's timings and its stage, not the
    evaluation's). Before, only the path written in results.json matched, and ckpt_path=run/checkpoints/last.ckpt
    wrote a results.json without them."""
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    (run_dir / "results.json").write_text(json.dumps({
        "metrics": {"train/loss": 1.5, "val/loss": 2.0},
        "timings": {"model_s": 1.0, "fit_s": 30.0, "validate_s": 2.0, "total_s": 40.0, "train_tokens": 600,
                    "train_tokens_per_s": 25.0, "stages": {"training": {"s": 30.0}, "eval": {"s": 1.5}}},
        "preempted": {"signal": "SIGTERM", "step": 4, "checkpoint": str(checkpoint), "after_training": True}}))
    expected = {"metrics": {"train/loss": 1.5}, "timings": {"fit_s": 30.0, "train_tokens": 600,
                                                           "train_tokens_per_s": 25.0, "stages": {"training": {"s": 30.0}}}}
    monkeypatch.chdir(tmp_path)
    for named in (checkpoint, Path("run/checkpoints/last.ckpt"), Path("run/../run/checkpoints/last.ckpt")):
        assert recorded_training(run_dir, named, 4) == expected
    assert recorded_training(run_dir, checkpoint, 3) == {}  # another step: not the stopped run's checkpoint
    assert recorded_training(run_dir, tmp_path / "other.ckpt", 4) == {}


def test_the_resumed_run_reports_the_recorded_training_in_place_of_its_own(tmp_path):
    """The run resumed after training (at the recorded stop's step: it trained no step) takes the recorded fit's
    figures. Its own fit took
    0.5 s of its 8.5 s: total_s is 8.5 - 0.5 + 30 = 38 (model_s + data_s + fit_s + validate_s). Its evaluation's
    figures stay its own. A run that trained keeps its own throughout."""
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    (tmp_path / "results.json").write_text(json.dumps({
        "metrics": {"train/loss": 1.5, "train/tokens_per_s": 25.0, "val/loss": 2.5},
        "timings": {"fit_s": 30.0, "train_tokens": 750, "train_tokens_per_s": 25.0, "total_s": 50.0,
                    "stages": {"training": {"s": 30.0, "peak_gib": 2.0}, "eval": {"s": 9.0}}},
        "preempted": {"signal": "SIGTERM", "step": 4, "checkpoint": str(checkpoint), "after_training": True}}))
    own = {"steps": 4, "metrics": {"val/loss": 2.0},
           "timings": {"model_s": 3.0, "data_s": 1.0, "fit_s": 0.5, "validate_s": 4.0, "total_s": 8.5,
                       "train_tokens": 0, "train_tokens_per_s": 0.0,
                       "stages": {"training": {"s": 0.5, "peak_gib": 0.1}, "eval": {"s": 4.0}}}}
    resumed = with_recorded_training(own, tmp_path, checkpoint)
    assert resumed["metrics"] == {"train/loss": 1.5, "train/tokens_per_s": 25.0, "val/loss": 2.0}
    assert resumed["timings"] == {"model_s": 3.0, "data_s": 1.0, "fit_s": 30.0, "validate_s": 4.0, "total_s": 38.0,
                                  "train_tokens": 750, "train_tokens_per_s": 25.0,
                                  "stages": {"training": {"s": 30.0, "peak_gib": 2.0}, "eval": {"s": 4.0}}}
    trained = {**own, "steps": 6}  # resumed at step 4, it trained on
    assert with_recorded_training(trained, tmp_path, checkpoint) == trained
    assert with_recorded_training(own, tmp_path, None) == own  # not resumed


def test_a_run_resumed_mid_training_adds_the_earlier_fits_seconds():
    """12 s of fits before the checkpoint: fit_s 5 + 12 = 17, the training stage 4.5 + 12 = 16.5, total_s 9 + 12 = 21;
    tokens and their rate come whole from callbacks.Throughput."""
    timings = {"model_s": 1.0, "data_s": 1.0, "fit_s": 5.0, "validate_s": 2.0, "total_s": 9.0, "train_tokens": 900,
               "train_tokens_per_s": 60.0, "stages": {"training": {"s": 4.5, "peak_gib": 1.0}, "eval": {"s": 2.0}}}
    assert with_earlier_fits(timings, 12.0) == {**timings, "fit_s": 17.0, "total_s": 21.0,
                                                "stages": {"training": {"s": 16.5, "peak_gib": 1.0}, "eval": {"s": 2.0}}}
    assert with_earlier_fits(timings, 0.0) == timings


def test_sigterm_as_the_fit_begins_stops_it_with_a_checkpoint_and_status_143(tmp_path, monkeypatch, signal_guard):
    """SIGTERM after Lightning set up its own handler for the fit and before Preemption took the signals over (the
    train loader's setup, a sanity check) reached both: Lightning's note of it ended the fit after its first step with
    SIGTERMException, status 0 and no record, as if the run had completed."""
    signal_when_called(monkeypatch, Preemption, "on_train_start", signal.SIGTERM)
    stopped = smoke_here([f"hydra.run.dir={tmp_path}"], expect=128 + signal.SIGTERM)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert f"preempted (SIGTERM) at step 1: checkpoint written to {checkpoint}" in stopped.stdout + stopped.stderr
    assert results(tmp_path)["preempted"] == {"signal": "SIGTERM", "step": 1, "checkpoint": str(checkpoint),
                                              "after_training": False}
