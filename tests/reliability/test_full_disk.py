"""A full disk while a run writes results.json, a checkpoint (periodic or the preemption's), a plot or its log, while
solopo-eval writes its outputs, or while Hydra writes the run folder's .hydra/ before either begins: the run stops in
one line that names the file (``error: could not write PATH: No space left on device``), exit status 2, no traceback,
failed.json where the disk still takes it, and no temporary file left behind. (The write itself, which keeps the
previous file whole: test_caches and test_checkpoints; a failed cache write, a warning: test_caches; the embedded
model's folder: test_model_cache.)"""
import errno
import json
import logging
import os
import pickle
import signal
import sys
import threading
import types

import pytest
import torch
from omegaconf import OmegaConf

from in_process import call
from solopo.cache import ReadFailed, WriteFailed, failed_write
from solopo.training.callbacks import Preemption
from support import (ROOT, SMOKE, full_disk, full_disk_for_checkpoints, full_disk_for_hydra, full_disk_for_the_log,
                     smoke_here)

NO_EVAL = ["eval.enabled=false", "logger=none"]
EVAL = ["model=tiny", "eval.n_items=2", "eval.lengths=[short,256]", "eval.depths=[0.5]"]  # solopo-eval, small


def signal_at_step_2(monkeypatch):
    """SIGTERM, a scheduler's notice, reaches the run during its second step."""
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_before_batch = trainer.global_step
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Preemption, "on_train_batch_start", on_train_batch_start)


def stopped(done) -> str:
    """The one line a stopped command ends with; there is no traceback."""
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def leftovers(run_dir) -> list:
    """Temporary files of the atomic writer (.NAME.HOST.PID.RANDOM.tmp) and of the checkpoint (last.ckpt.RANDOM.tmp)."""
    return sorted(run_dir.rglob("*.tmp"))


def test_a_full_disk_at_results_json_stops_the_run_in_one_line(tmp_path, monkeypatch):
    """Every write fails: results.json, then failed.json, which the line says too."""
    full_disk(monkeypatch)
    line = stopped(smoke_here([*NO_EVAL, f"hydra.run.dir={tmp_path}"], expect=2))
    assert line == (f"error: could not write {tmp_path / 'results.json'}: No space left on device; "
                    f"could not write {tmp_path / 'failed.json'}: No space left on device")
    assert leftovers(tmp_path) == [] and not (tmp_path / "results.json").exists()


def test_a_resumed_run_keeps_its_checkpoint_until_its_results_json_is_written(tmp_path, monkeypatch):
    """A run preempted at step 2, resumed with checkpoint.keep=false, completes its fit and then cannot write
    results.json: last.ckpt stays, so the next ckpt_path=last resumes from step 2 again. Before, the checkpoint was
    removed as the fit ended, and the next run started from scratch. Once a resumed run's results.json is written, the
    checkpoint goes."""
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    with monkeypatch.context() as patch:
        signal_at_step_2(patch)
        smoke_here([*NO_EVAL, f"hydra.run.dir={tmp_path}"], expect=128 + signal.SIGTERM)
    with monkeypatch.context() as patch:
        full_disk(patch)
        line = stopped(smoke_here([*NO_EVAL, "ckpt_path=last", f"hydra.run.dir={tmp_path}"], expect=2))
    assert line.startswith(f"error: could not write {tmp_path / 'results.json'}: No space left on device")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    resumed = smoke_here([*NO_EVAL, "ckpt_path=last", f"hydra.run.dir={tmp_path}"])
    assert f"resuming from {checkpoint}" in resumed.stdout + resumed.stderr
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["steps"] == 4 and "preempted" not in record and not checkpoint.parent.exists()


@pytest.mark.parametrize("when", ["periodic", "preempted"])
def test_a_full_disk_at_a_checkpoint_stops_the_run_in_one_line(when, tmp_path, monkeypatch):
    """A periodic checkpoint, or the one a preempted run writes to resume from: its line names last.ckpt, failed.json
    records it for the report, and the signal handlers of the process are as they were."""
    before = signal.getsignal(signal.SIGTERM)
    full_disk_for_checkpoints(monkeypatch)
    if when == "preempted":
        signal_at_step_2(monkeypatch)
    extra = ["checkpoint.every_n_steps=2"] if when == "periodic" else []
    line = stopped(smoke_here([*NO_EVAL, *extra, f"hydra.run.dir={tmp_path}"], expect=2))
    detail = f"could not write {tmp_path / 'checkpoints' / 'last.ckpt'}: No space left on device"
    assert line == f"error: {detail}"
    failure = json.loads((tmp_path / "failed.json").read_text())
    assert (failure["reason"], failure["detail"]) == ("write failed", detail)
    assert leftovers(tmp_path) == [] and not (tmp_path / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_full_disk_stops_an_evaluation_in_one_line(tmp_path, monkeypatch):
    """solopo-eval's first write is a plot: the line names it, then failed.json, which the full disk refuses too (as a
    training run's line says it), and no part of either is left."""
    full_disk(monkeypatch)
    done = call("solopo.evaluate", [*EVAL, f"hydra.run.dir={tmp_path}"], expect=2)
    plot, record = stopped(done).split("; ")
    assert plot.startswith(f"error: could not write {tmp_path}/eval_") and plot.endswith(".png: No space left on device")
    assert record == f"could not write {tmp_path / 'failed.json'}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "evaluate.log"]


@pytest.mark.parametrize("full_error", ["0", "1"], ids=["hydra_report", "hydra_full_error"])
@pytest.mark.parametrize("command, args", [("solopo.run", [*SMOKE, *NO_EVAL]), ("solopo.evaluate", EVAL)],
                         ids=["train", "eval"])
def test_a_full_disk_as_hydra_writes_the_run_folder_stops_in_one_line(command, args, full_error, tmp_path,
                                                                      monkeypatch):
    """Hydra writes .hydra/config.yaml before the task function runs and reported the failure itself: a traceback and
    status 1, whether it prints the traceback in full (HYDRA_FULL_ERROR=1) or not (the default)."""
    full_disk_for_hydra(monkeypatch)
    done = call(command, [*args, f"hydra.run.dir={tmp_path}"], expect=2, env={"HYDRA_FULL_ERROR": full_error},
                cwd=ROOT)
    assert stopped(done) == f"error: could not write {tmp_path / '.hydra' / 'config.yaml'}: No space left on device"
    assert done.stderr.strip().splitlines() == [stopped(done)]


def test_a_file_of_hydra_is_whole_or_absent(tmp_path, monkeypatch):
    """Hydra wrote .hydra/config.yaml with open() and write(): a full disk (or a kill) left part of it, which a study's
    record of a failed job reads back (experiments/studies/failures.py). It is written whole or not at all now."""
    full_disk_for_hydra(monkeypatch)
    done = smoke_here([*NO_EVAL, f"hydra.run.dir={tmp_path}"], expect=2)
    assert stopped(done) == f"error: could not write {tmp_path / '.hydra' / 'config.yaml'}: No space left on device"
    assert not (tmp_path / ".hydra" / "config.yaml").exists() and leftovers(tmp_path) == []


def test_a_full_disk_at_multirun_yaml_stops_the_sweep_in_one_line(tmp_path, monkeypatch):
    """Hydra's sweeper writes multirun.yaml before the first job: a full disk there was Hydra's traceback, status 1,
    and half the file. Now one line, status 2, no file and no job."""
    full_disk(monkeypatch, only="multirun.yaml")
    done = call("solopo.run", ["-m", *SMOKE, *NO_EVAL, "seed=0,1", f"hydra.sweep.dir={tmp_path}"], expect=2, cwd=ROOT)
    assert stopped(done) == f"error: could not write {tmp_path / 'multirun.yaml'}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_the_optuna_sweeper_writes_its_results_whole(tmp_path, monkeypatch, capsys):
    """The Optuna sweeper's sweep() as solopo wraps it (solopo.hydra_errors.saving_whole), around an implementation
    that writes as the plugin's does, OmegaConf.save of its module (its own imports optuna: the search itself is the
    slow test below): a full disk is one line, status 2, and no file."""
    from solopo.hydra_errors import hydra_files_whole

    optuna = pytest.importorskip("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper")
    hydra_files_whole()
    implementation = types.ModuleType("optuna_sweeper_impl")
    implementation.OmegaConf = OmegaConf
    monkeypatch.setitem(sys.modules, implementation.__name__, implementation)

    class Implementation:
        __module__ = implementation.__name__

        def sweep(self, arguments):
            results = OmegaConf.create({"best_value": 0.5})
            implementation.OmegaConf.save(results, f"{tmp_path}/optimization_results.yaml")

    sweeper = object.__new__(optuna.OptunaSweeper)
    sweeper.sweeper = Implementation()
    full_disk(monkeypatch, only="optimization_results.yaml")
    with pytest.raises(SystemExit) as stopped_with:
        sweeper.sweep([])
    line = f"could not write {tmp_path / 'optimization_results.yaml'}: No space left on device"
    assert (stopped_with.value.code, capsys.readouterr().err) == (2, f"error: {line}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # optuna's import and a trial: some seconds; the wrapper is the test above's
def test_a_full_disk_at_the_optuna_results_stops_the_search_in_one_line(tmp_path, monkeypatch):
    """The Optuna sweeper writes optimization_results.yaml after its last trial: a full disk there was Hydra's
    traceback, status 1, and half the file."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the solopo[optuna] extra is not installed")
    full_disk(monkeypatch, only="optimization_results.yaml")
    done = smoke_here(["hparams_search=optuna", *NO_EVAL, "optimized_metric=val/loss", "hydra.sweeper.n_trials=1",
                       f"hydra.sweep.dir={tmp_path}"], expect=2)
    line = f"could not write {tmp_path / 'optimization_results.yaml'}: No space left on device"
    assert stopped(done) == f"error: {line}" and leftovers(tmp_path) == []
    assert not (tmp_path / "optimization_results.yaml").exists()


@pytest.mark.parametrize("lines", [0, 5], ids=["at_once", "during_the_fit"])  # the 6th: the fit's first batch's
def test_a_full_disk_at_run_log_stops_the_run_in_one_line(lines, tmp_path, monkeypatch):
    """logging printed its "--- Logging error ---" traceback on stderr for each line the run logged once the disk was
    full, and the run went on to status 0: the first line that cannot be written stops it, as any failed write does,
    and failed.json (the disk takes it here) says why."""
    full_disk_for_the_log(monkeypatch, lines)
    done = smoke_here([*NO_EVAL, f"hydra.run.dir={tmp_path}"], expect=2)
    detail = f"could not write {tmp_path / 'run.log'}: No space left on device"
    assert stopped(done) == f"error: {detail}" and done.stderr.strip().splitlines() == [f"error: {detail}"]
    failure = json.loads((tmp_path / "failed.json").read_text())
    assert (failure["reason"], failure["detail"]) == ("write failed", detail)
    assert len((tmp_path / "run.log").read_text().splitlines()) == lines


def test_a_full_disk_at_evaluate_log_stops_an_evaluation_in_one_line(tmp_path, monkeypatch):
    full_disk_for_the_log(monkeypatch)
    done = call("solopo.evaluate", [*EVAL, f"hydra.run.dir={tmp_path}"], expect=2)
    assert stopped(done) == f"error: could not write {tmp_path / 'evaluate.log'}: No space left on device"


def test_a_full_log_met_by_another_thread_is_left_to_the_main_thread(tmp_path, monkeypatch, capsys):
    """A thread (or a forked DataLoader worker) cannot stop the run: its line is dropped, without logging's report; the
    main thread's next line stops the run, and the lines after that one reach the console only."""
    from solopo.training.loggers import RunLog

    full_disk_for_the_log(monkeypatch)
    log = logging.getLogger("solopo.tests.run_log")
    log.propagate, handler = False, RunLog(str(tmp_path / "run.log"))
    log.addHandler(handler)
    try:
        thread = threading.Thread(target=log.warning, args=["from a thread"])
        thread.start()
        thread.join()
        with pytest.raises(WriteFailed) as failed:
            log.warning("from the main thread")
        log.warning("after the failure")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert str(failed.value) == f"could not write {tmp_path / 'run.log'}: No space left on device"
    assert capsys.readouterr().err == ""


def test_a_failed_write_is_found_under_what_it_caused():
    """A trainer that stops on a failed checkpoint writes its logs as it goes, and those fail too: the first failed
    write is the one reported. A full disk met by a writer that names no file is still one; other errors are not."""
    first = WriteFailed.of("/run/checkpoints/last.ckpt", OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise first
        except OSError:
            raise OSError(errno.ENOSPC, "No space left on device")  # the CSV log's flush, while the trainer stops
    except OSError as later:
        assert failed_write(later) is first
    bare = RuntimeError("teardown")
    bare.__context__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert str(failed_write(bare)) == "could not write an output file: Disk quota exceeded"
    assert failed_write(ValueError("bad value")) is None
    assert failed_write(FileNotFoundError(errno.ENOENT, "No such file or directory", "/data.jsonl")) is None


class Failing(torch.utils.data.Dataset):
    """A dataset whose one item raises ``failure``, in the worker process that reads it."""

    def __init__(self, failure: OSError):
        self.failure = failure

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        raise self.failure


@pytest.mark.parametrize("failure", [WriteFailed, ReadFailed])
def test_a_failed_file_reaches_another_process_intact(failure):
    """A ReadFailed or WriteFailed raised in a child process reaches the parent pickled, its path, errno and line kept;
    from a DataLoader worker, torch rebuilds it from one argument, the worker's traceback, whose str() raised
    TypeError (strerror None) where it should show that traceback, the failed file's line at its end."""
    sent = failure.of("/run/results.json", OSError(errno.ENOSPC, "No space left on device"))
    back = pickle.loads(pickle.dumps(sent))
    assert (type(back), back.filename, back.errno, str(back)) == (failure, sent.filename, sent.errno, str(sent))
    with pytest.raises(failure) as rebuilt:
        next(iter(torch.utils.data.DataLoader(Failing(sent), num_workers=1)))
    assert str(rebuilt.value).startswith(f"Caught {failure.__name__} in DataLoader worker process 0")
    assert str(sent) in str(rebuilt.value)
