"""The line a stopped run prints to resume it, pasted as it is into a shell: a run in a directory whose name Hydra's
grammar would not read unquoted (a sweep job's, '0_algo=dpo,logger=csv') resumes; a job of a sweep says to rerun the
sweep in its directory, and that resumes it; the quoted override reads back as the path through the shell and Hydra."""
import re
import shlex
import signal

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from solopo.training.callbacks import Preemption
from solopo.training.lightning_run import override
from in_process import run_here
from support import ROOT, SMOKE, signal_when_called, smoke_here


def pasted_hint(output: str) -> list[str]:
    """The overrides of the resume hint in ``output``, as a shell splits them when the line is pasted."""
    found = re.search(r"resume by rerunning the (?:command|sweep) with (.*)$", output, re.MULTILINE)
    assert found, output[-3000:]
    return shlex.split(found[1])


def test_the_resume_hint_of_a_run_in_a_directory_named_after_overrides_works_pasted(tmp_path, monkeypatch,
                                                                                    signal_guard):
    """A directory like a sweep job's ('0_algo=dpo,logger=csv') was named unquoted in the hint, which Hydra's grammar
    refuses ("mismatched input '='"); quoted, the pasted hint resumes the run."""
    run_dir = tmp_path / "0_algo=dpo,logger=csv"
    with monkeypatch.context() as patch:
        signal_when_called(patch, Preemption, "on_train_start", signal.SIGTERM)
        stopped = smoke_here([f"hydra.run.dir='{run_dir}'"], expect=128 + signal.SIGTERM)
    hint = pasted_hint(stopped.stdout + stopped.stderr)
    assert hint == ["ckpt_path=last", f"hydra.run.dir=\"{run_dir}\""]
    resumed = smoke_here(hint)
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stdout + resumed.stderr


def test_a_job_of_a_sweep_says_to_rerun_the_sweep_in_its_directory_and_that_resumes_it(tmp_path, monkeypatch,
                                                                                     signal_guard):
    """A stopped job of a sweep named its own directory as hydra.run.dir, unquoted: the line did not parse, and a rerun
    of the sweep does not read hydra.run.dir. Rerun with the sweep's directory, the job resumes from its checkpoint."""
    sweep = ["-m", *SMOKE, "algo=dpo"]
    with monkeypatch.context() as patch:
        signal_when_called(patch, Preemption, "on_train_start", signal.SIGTERM)
        stopped = run_here([*sweep, f"hydra.sweep.dir={tmp_path / 'sweep'}"], 128 + signal.SIGTERM, cwd=ROOT)
    output = stopped.stdout + stopped.stderr
    assert "resume by rerunning the sweep with" in output
    hint = pasted_hint(output)
    assert hint == [f"hydra.sweep.dir={tmp_path / 'sweep'}", "ckpt_path=last"]
    resumed = run_here([*sweep, *hint], cwd=ROOT)
    job = re.search(r"checkpoint written to (\S+);", output)[1]
    assert job.startswith(str(tmp_path / "sweep")) and f"resuming from {job}" in resumed.stdout + resumed.stderr


@pytest.mark.parametrize("path", ["/tmp/sw/0_algo=dpo,logger=csv", "/tmp/plain/run", "/tmp/a b", "/tmp/it's", "/tmp/~x"])
def test_an_override_in_the_hint_reads_back_as_the_path_through_the_shell_and_hydra(path):
    [argument] = shlex.split(override("hydra.run.dir", path))
    assert OverridesParser.create().parse_override(argument).value() == path
