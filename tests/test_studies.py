"""What the GPU studies share (experiments/studies): the job runner's scheduling, skipping and failure records, on
paper_mini's jobs with stand-in commands that take a fraction of a second; a study launcher's dry run; the report
command's order of work. A GPU call's set-up and archive: tests/test_study_gpu_calls.py."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.paper_mini import study  # noqa: E402
from experiments.studies import failures, reports, runner  # noqa: E402


@pytest.mark.parametrize("log, reason", [
    ("Traceback...\nValueError: no train pairs left ({'sampling': {'kept': 0}}; skipped {})\n", "no pairs"),
    ("error: no training pairs: 0 of 16 questions had both a correct and an incorrect sample\n", "no pairs"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n", "out of memory"),
    ("Traceback...\ntorch.AcceleratorError: CUDA error: out of memory\nSearch for `cudaErrorMemoryAllocation'\n",
     "out of memory"),  # outside the caching allocator: retried beside fewer jobs, not a failure of the job's own
    ("Traceback...\nKeyError: 'x'\nomegaconf.errors.ConfigKeyError: Key 'foo' is not in struct\n", "ConfigKeyError"),
    ("nothing useful\n", "exit status 3"),
    ("error: could not write /runs/a/results.json: No space left on device\n", "write failed"),
    ("[solopo][WARNING] - interrupted (SIGINT) at step 83: checkpoint written to /r/last.ckpt; resume by ...\n",
     "interrupted"),
])
def test_failure_reasons(log, reason):
    assert failures.classify(log, 3)[0] == reason


@pytest.mark.parametrize("earlier_app", [False, True])
def test_a_failure_record_reads_the_job_config_where_hydra_is_imported(tmp_path, earlier_app):
    """The launcher imports Hydra (it composes the jobs), whose own `hydra:` resolver cannot answer outside an app: a
    failed job's config, with Hydra's logger path in it, is still recorded, and the launcher goes on. Where an app ran
    earlier in the process (an in-process run, as the tests make), the resolver would answer with that app's paths:
    the record keeps the interpolation as written instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    setup_globals()  # Hydra's own `hydra:` resolver, registered as composing a job registers it
    stale, HydraConfig.instance().cfg = HydraConfig.instance().cfg, None
    if earlier_app:
        HydraConfig.instance().cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": "/elsewhere"}}})
    try:
        (tmp_path / ".hydra").mkdir()
        (tmp_path / ".hydra" / "config.yaml").write_text("seed: 3\nlogger:\n  save_dir: ${hydra:runtime.output_dir}\n"
                                                         "eval:\n  seed: ${seed}\n")
        record = failures.failure_record("torch.OutOfMemoryError: CUDA out of memory.\n", 1, tmp_path)
    finally:
        HydraConfig.instance().cfg = stale
    assert record["reason"] == "out of memory"
    assert record["config"]["seed"] == 3 and record["config"]["eval"]["seed"] == 3
    assert record["config"]["logger"]["save_dir"] == "${hydra:runtime.output_dir}"


def fake_command(self, root, python, extra):
    """Instead of a run: 0.3 s of "sampling", Lightning's first line, 0.6 s of "training", then results.json,
    or for long_po the error a run without pairs ends with."""
    code = ("import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); time.sleep(0.3); "
            "sys.exit('ValueError: no val pairs left (kept 0)') if d.name.startswith('long_po') else None; "
            f"print({runner.READY_MARK!r}, flush=True); time.sleep(0.6); (d / 'results.json').write_text('{{}}')")
    return [python, "-c", code, str(root / self.name)]


def test_launcher_waits_for_leaders_records_failures_and_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(study.Job, "command", fake_command)
    jobs = study.select(study.study_jobs((0,)), only={"short_po", "long_po", "solopo"}, algos={"dpo", "simpo"})
    records = runner.run(jobs, tmp_path, parallel=3, deadline_s=60, default_s=5, extra=(), samplers=1, poll_s=0.05)
    by_name = {r["name"]: r for r in records}
    began = {name: r["ended_at"] - r["seconds"] for name, r in by_name.items()}
    assert len(records) == len(jobs) == 2 + 2 + 2 * 3
    failed = json.loads((tmp_path / "long_po-dpo-s0" / "failed.json").read_text())
    assert failed["reason"] == "no pairs" and "no val pairs left" in failed["detail"]
    assert by_name["long_po-simpo-s0"]["status"] == "failed" and by_name["short_po-dpo-s0"]["status"] == "done"
    # followers start once the leader printed Lightning's first line (0.3 s in), before it ends (0.9 s in)
    leader_start, leader_end = began["short_po-dpo-s0"], by_name["short_po-dpo-s0"]["ended_at"]
    assert leader_start + 0.25 <= began["short_po-simpo-s0"] < leader_end
    assert all(began[name] >= leader_start + 0.25 for name in began if name.startswith("solopo"))
    assert began["long_po-dpo-s0"] >= leader_start + 0.25  # one leader samples at a time (samplers=1)
    assert runner.run(jobs, tmp_path, 3, 60, 5, (), poll_s=0.05) == []  # done and failed jobs are not run again


def test_launcher_starts_nothing_that_cannot_finish_before_the_deadline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study.Job, "command", fake_command)
    jobs = study.select(study.study_jobs((0,)), only={"short_po"})
    assert runner.run(jobs, tmp_path, parallel=2, deadline_s=10, default_s=60, extra=(), poll_s=0.05) == []
    assert "not started (3; the next call runs them)" in capsys.readouterr().out


def test_jobs_running_at_the_deadline_are_stopped_and_set_aside(tmp_path, monkeypatch):
    slow = lambda self, root, python, extra: [python, "-c", "import time; time.sleep(60)"]  # noqa: E731
    monkeypatch.setattr(study.Job, "command", slow)
    jobs = study.select(study.study_jobs((0,)), only={"base"})
    records = runner.run(jobs, tmp_path, parallel=1, deadline_s=1.0, default_s=0.5, extra=(), poll_s=0.05)
    assert [r["status"] for r in records] == ["interrupted"]
    assert not (tmp_path / "base-s0").exists() and runner.status(tmp_path, jobs[0]) is None  # runs again next call
    (aside,) = (tmp_path / ".partial").iterdir()
    assert json.loads((aside / "job.json").read_text())["status"] == "interrupted"


def test_a_job_out_of_memory_beside_others_runs_again_with_fewer(tmp_path, monkeypatch, capsys):
    """Jobs share one GPU, so running out of its memory beside others is a transient: the job runs once more, when at
    most half of --parallel run (here: alone, after the leader)."""
    def command(self, root, python, extra):
        run_dir = root / self.name
        if self.name == "short_po-simpo-s0":  # out of memory on its first attempt only
            code = ("import pathlib, sys; d = pathlib.Path(sys.argv[1]); m = d.parent / 'tried'\n"
                    "if m.exists(): (d / 'results.json').write_text('{}')\n"
                    "else: m.write_text(''); sys.exit('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB')")
            return [python, "-c", code, str(run_dir)]
        return fake_command(self, root, python, extra)

    monkeypatch.setattr(study.Job, "command", command)
    jobs = study.select(study.study_jobs((0,)), only={"short_po"}, algos={"dpo", "simpo"})
    records = runner.run(jobs, tmp_path, parallel=2, deadline_s=60, default_s=5, extra=(), poll_s=0.05)
    statuses = [(r["name"], r["status"]) for r in records]
    assert statuses.count(("short_po-simpo-s0", "retried")) == 1 and ("short_po-simpo-s0", "done") in statuses
    assert not (tmp_path / "short_po-simpo-s0" / "failed.json").exists()
    leader_end = next(r["ended_at"] for r in records if r["name"] == "short_po-dpo-s0")
    second = [r for r in records if r["name"] == "short_po-simpo-s0"][-1]
    assert second["ended_at"] - second["seconds"] >= leader_end - 0.1  # started once the leader was done
    assert "out of memory beside 1 other jobs; it starts again when at most 0 others run" in capsys.readouterr().out


def test_a_dry_run_lists_each_job_its_state_and_command_and_runs_nothing(tmp_path, capsys):
    jobs = study.select(study.study_jobs((0,)), only={"base", "short_po"}, algos={"dpo"})
    (tmp_path / "base-s0").mkdir()
    (tmp_path / "base-s0" / "results.json").write_text("{}")
    args = type("Args", (), {"root": tmp_path, "overrides": ["model=tiny"], "dry_run": True})()
    runner.launch(jobs, args)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["base-s0", "done"] and lines[1].split()[:2] == ["short_po-dpo-s0", "leader"]
    assert lines[1].endswith(f"algo=dpo model=tiny hydra.run.dir={tmp_path / 'short_po-dpo-s0'}")
    assert lines[1].index("leader") == lines[0].index("done")  # one column for the states
    assert lines[-1] == "2 jobs" and not (tmp_path / "jobs.json").exists()


def test_job_names_match_shell_patterns_and_options_list_words():
    assert runner.named("long_po-dpo-s0", ()) and runner.named("long_po-dpo-s0", ("x", "long_po-*-s0"))
    assert not runner.named("long_po-dpo-s1", ("long_po-*-s0",))
    assert runner.listed("a,b,") == ("a", "b") and runner.listed(None) == () and runner.listed("") == ()


def test_a_report_reads_every_input_before_it_writes(tmp_path, capsys):
    """A page without generated blocks stops the report with one line naming it, before anything is written; with a
    page, the report's files are printed, then the page, whose blocks hold the generated lines."""
    written = []

    def write(inputs):
        written.append(inputs)
        return [tmp_path / "study.md"]

    page, root = tmp_path / "README.md", tmp_path / "ROOT.md"
    root.write_text("<!-- solopo.report:runs -->\nold\n<!-- /solopo.report:runs -->\n")
    page.write_text("no blocks\n")
    with pytest.raises(SystemExit) as stop:
        reports.generate([root, page], lambda: "runs", lambda runs: {"runs": [runs]}, write)
    assert stop.value.code == 2 and not written and "old" in root.read_text()  # no page is half-updated
    assert capsys.readouterr().err.startswith(f"error: {page}: no <!-- solopo.report:NAME -->")
    page.write_text("<!-- solopo.report:runs -->\n<!-- /solopo.report:runs -->\n")
    reports.generate([page, root], lambda: "3 runs", lambda runs: {"runs": [runs]}, write)
    assert written == ["3 runs"] and capsys.readouterr().out.split() == [str(tmp_path / "study.md"), str(page),
                                                                         str(root)]
    for each in (page, root):
        assert each.read_text() == "<!-- solopo.report:runs -->\n3 runs\n<!-- /solopo.report:runs -->\n"


def test_a_job_that_wrote_results_and_exited_non_zero_is_failed_not_done(tmp_path):
    """A run stopped on non-finite steps leaves results.json, and the runner's failed.json beside it: the launcher
    counts it failed (run again with --retry-failed), not done."""
    job = study.study_jobs((0,))[0]
    (tmp_path / job.name).mkdir()
    (tmp_path / job.name / "results.json").write_text(json.dumps({"faults": {"stopped": "8 non-finite steps"}}))
    assert runner.status(tmp_path, job) == "failed"  # its results say so, with or without the launcher's record
    (tmp_path / job.name / "failed.json").write_text(json.dumps({"reason": "exit status 1"}))
    assert runner.status(tmp_path, job) == "failed"
    (tmp_path / job.name / "failed.json").unlink()
    (tmp_path / job.name / "results.json").write_text(json.dumps({"faults": {"stopped": None}}))
    assert runner.status(tmp_path, job) == "done"
    (tmp_path / job.name / "results.json").write_text(json.dumps({"preempted": {"step": 3}}))
    assert runner.status(tmp_path, job) is None  # preempted: runs again
