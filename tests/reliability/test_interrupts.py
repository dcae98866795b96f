"""A Ctrl-C that no handler of the run takes (training's Preemption takes it from the fit on): before training (the
data, the models, sampling, the reference pass) or in solopo-eval, it ends the run in one line naming the stage,
status 130, failed.json saying "interrupted", and leaves no cache entry half-written."""
import json
import signal
from pathlib import Path

from solopo.models import loading
from solopo.report.runs import find_runs
from solopo.report.tables import status_of
from solopo.training import reference
from in_process import call
from support import signal_when_called, smoke_here


def stopped_interrupted(run_dir: Path, done) -> None:
    """What a Ctrl-C that no handler of the run takes leaves: one line and no traceback, failed.json saying
    "interrupted", and a report that lists the run as stopped by it (before, "not reported": run.log alone)."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert json.loads((run_dir / "failed.json").read_text())["reason"] == "interrupted"
    assert [status_of(run) for run in find_runs([run_dir])] == ["stopped: interrupted"]


def test_ctrl_c_in_the_reference_pass_ends_in_one_line_and_leaves_no_cache_entry(tmp_path, monkeypatch,
                                                                                 foreground_ctrl_c):
    """A Ctrl-C before training (here in the reference pass, before Preemption takes the signals) printed a
    47-frame KeyboardInterrupt traceback: now one line naming the stage, status 130, and failed.json; the reference
    cache holds no entry (nor a temporary file) that a later run would read."""
    monkeypatch.setenv("SOLOPO_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_when_called(patch, reference, "group_logps", signal.SIGINT)
        done = smoke_here(["algo=dpo", f"hydra.run.dir={run_dir}"], expect=128 + signal.SIGINT)
    line = ("interrupted (SIGINT) in its reference stage, before training: nothing to resume; rerun the command to "
            "start again")
    assert line in done.stdout + done.stderr
    stopped_interrupted(run_dir, done)
    left = sorted(path.name for path in (tmp_path / "cache" / "reference").iterdir())
    assert len(left) == 1 and left[0].endswith(".lock"), left  # the entry's lock, which holds nothing


def test_ctrl_c_in_solopo_eval_ends_in_one_line(tmp_path, monkeypatch, foreground_ctrl_c):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_when_called(patch, loading, "load_model", signal.SIGINT)
        done = call("solopo.evaluate", ["experiment=smoke", "model=tiny", f"hydra.run.dir={run_dir}"],
                    expect=128 + signal.SIGINT, cwd=tmp_path)
    assert ("interrupted (SIGINT) before its results were written: nothing to resume; rerun the command to start "
            "again") in done.stdout + done.stderr
    stopped_interrupted(run_dir, done)
