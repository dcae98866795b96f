"""What the GPU studies share (experiments/studies): the job runner's scheduling, skipping and failure records, on
paper_mini's jobs with stand-in commands that take a fraction of a second; a study launcher's dry run; the report
command's order of work; and the set-up and archive of a GPU call (run.sh) with stand-ins for python and nvidia-smi."""
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.paper_mini import study  # noqa: E402
from experiments.studies import failures, reports, runner  # noqa: E402

SCRIPT_ENV = dict(os.environ, PYTHONPATH=str(ROOT))  # a study script finds this checkout's solopo


@pytest.mark.parametrize("log, reason", [
    ("Traceback...\nValueError: no train pairs left ({'sampling': {'kept': 0}}; skipped {})\n", "no pairs"),
    ("error: no training pairs: 0 of 16 questions had both a correct and an incorrect sample\n", "no pairs"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n", "out of memory"),
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


def stand_ins(tmp_path: Path, launcher: str = "") -> tuple[Path, Path, Path, Path]:
    """A GPU call's folders (the study's, OUT) beside the file where the stand-in python records each call's
    arguments, and the folder of stand-ins: python (it runs the shell lines ``launcher`` when called for a launch.py)
    and nvidia-smi."""
    study_dir, out, calls, bin_ = tmp_path / "study", tmp_path / "out", tmp_path / "calls", tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                                 + (f'case "$1" in *launch.py) {launcher};; esac\n' if launcher else ""))
    (bin_ / "nvidia-smi").write_text("#!/bin/sh\necho FakeGPU, 80 GiB\n")
    for tool in bin_.iterdir():
        tool.chmod(0o755)
    return study_dir, out, calls, bin_


@pytest.mark.parametrize("name, steps", [
    ("paper_mini", ["experiments/paper_mini/launch.py", "experiments/paper_mini/report.py"]),
    ("decisive", ["experiments/decisive/curve.py", "experiments/decisive/launch.py", "experiments/decisive/report.py"]),
])
def test_a_gpu_call_sets_up_runs_the_study_and_archives_it(tmp_path, name, steps):
    """run.sh with stand-ins for python (it records its arguments) and nvidia-smi: an earlier call's archive is
    unpacked first, then the runs collected into the repository are put back, the model's weights are made once
    before the study's steps, the launcher gets the budget less the set-up and 60 s, and the study directory goes into
    one archive."""
    study_dir, out, calls, bin_ = stand_ins(tmp_path)
    earlier = tmp_path / "earlier"
    (earlier / "old").mkdir(parents=True)
    (earlier / "old" / "results.json").write_text("{}")
    (earlier / "jobs.json").write_text("{}")  # every call's archive has one: the runs are put back all the same
    with tarfile.open(tmp_path / "earlier.tar.gz", "w:gz") as archive:
        archive.add(earlier / "old", arcname=str(study_dir / "old").lstrip("/"))
        archive.add(earlier / "jobs.json", arcname=str(study_dir / "jobs.json").lstrip("/"))
    (tmp_path / "collected").mkdir()
    env = dict(os.environ, PYTHON=str(bin_ / "python"), PATH=f"{bin_}:{os.environ['PATH']}", STUDY=str(study_dir),
               OUT=str(out), SOLOPO_CACHE=str(tmp_path / "cache"), RESTORE=str(tmp_path / "earlier.tar.gz"),
               RESTORE_RUNS=str(tmp_path / "collected"))
    done = subprocess.run(["bash", f"experiments/{name}/run.sh", "100", "--names", "x"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    restored, *lines = calls.read_text().splitlines()
    assert restored.split()[:3] == ["experiments/studies/collect.py", "--restore", str(tmp_path / "collected")]
    assert lines[0].startswith("-c from solopo.models.embedded import") and [x.split()[0] for x in lines[1:]] == steps
    launch = next(x.split() for x in lines if "launch.py" in x)
    assert launch[launch.index("--deadline") + 1] in ("40", "39") and launch[-2:] == ["--names", "x"]
    with tarfile.open(out / f"{name}.tar.gz") as archive:
        names = archive.getnames()
    assert str(study_dir / "gpu.txt").lstrip("/") in names and str(study_dir / "old" / "results.json").lstrip("/") in names
    assert (study_dir / "gpu.txt").read_text() == "FakeGPU, 80 GiB\n" and "call took" in done.stdout


def test_a_call_s_archive_is_collected_compact_restored_and_the_next_archive_holds_only_new_files(tmp_path):
    """collect.py keeps each job's records (results.json on one line) and metrics.csv, the study's small files and
    the cache entries, not logs, checkpoints, lock files or folders without a job record; --restore puts them back
    on a fresh machine, whose archive (gpu_call.sh) then holds only what it made."""
    from experiments.studies import collect

    study, cache = tmp_path / "gpu" / "study", tmp_path / "gpu" / "cache"
    job = study / "a-short_po-dpo-s0"
    (job / "csv" / "version_0").mkdir(parents=True)
    (job / "results.json").write_text(json.dumps({"eval": {"trained": {"scores": [["q0", "4096", "0.5", 1.0]]}}},
                                                 indent=2))
    (job / "job.json").write_text('{"status": "done"}')
    (job / "csv" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,0.7\n")
    (job / "launch.log").write_text("lines\n")
    (job / "last.ckpt").write_text("weights")
    (study / "curve").mkdir()
    (study / "curve" / "results.json").write_text("{}")
    (study / "curve.json").write_text('{"chosen": 1024}')
    (cache / "pairs").mkdir(parents=True)
    (cache / "pairs" / "k.json").write_text("{}")
    (cache / "pairs" / "k.lock").write_text("")
    with tarfile.open(tmp_path / "call.tar.gz", "w:gz") as archive:
        for folder in (study, cache / "pairs"):
            archive.add(folder, arcname=str(folder).lstrip("/"))
    into = tmp_path / "repo" / "runs"
    collect.collect(tmp_path / "call.tar.gz", into, study, cache)
    kept = sorted(str(p.relative_to(into)) for p in into.rglob("*") if p.is_file())
    assert kept == ["a-short_po-dpo-s0/job.json", "a-short_po-dpo-s0/metrics.csv", "a-short_po-dpo-s0/results.json",
                    "cache/pairs/k.json", "curve.json"]
    assert len((into / "a-short_po-dpo-s0" / "results.json").read_text().splitlines()) == 1
    for path in into.rglob("*"):
        os.utime(path, (1e9, 1e9))  # a checkout's files are older than the call
    fresh, fresh_cache = tmp_path / "fresh" / "study", tmp_path / "fresh" / "cache"
    collect.restore(into, fresh, fresh_cache)
    assert (fresh / "a-short_po-dpo-s0" / "metrics.csv").exists() and (fresh_cache / "pairs" / "k.json").exists()
    (fresh / "a-long_po-dpo-s0").mkdir()
    (fresh / "a-long_po-dpo-s0" / "results.json").write_text("{}")
    env = dict(os.environ, NAME="t", STUDY=str(fresh), SOLOPO_CACHE=str(fresh_cache), OUT=str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    done = subprocess.run(["bash", "-c", "source experiments/studies/gpu_call.sh; began=$(date +%s); gpu_call_archive"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "out" / "t.tar.gz") as archive:
        files = {name.rsplit(str(tmp_path).lstrip("/"), 1)[1] for name in archive.getnames()
                 if archive.getmember(name).isfile()}
    assert files == {"/fresh/study/a-long_po-dpo-s0/results.json", "/fresh/study/.restored"}


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


def test_an_older_archive_collected_after_a_newer_one_keeps_the_later_attempt(tmp_path):
    """Two calls' archives of one job: the newer attempt finished (results.json, metrics.csv), the older failed.
    Collected newer first, then older: the finished attempt stays whole; collected in order, the newer replaces the
    older entirely (no failed.json or metrics.csv of the other attempt left beside it)."""
    from experiments.studies import collect

    def archive(name: str, ended: float, done: bool) -> Path:
        job = tmp_path / name / "study" / "a-short_po-dpo-s3"
        job.mkdir(parents=True)
        (job / "job.json").write_text(json.dumps({"status": "done" if done else "failed", "ended_at": ended}))
        (job / ("results.json" if done else "failed.json")).write_text(json.dumps({"attempt": name}))
        if done:
            (job / "metrics.csv").write_text("step\n0\n")
        return job.parent

    new, old = archive("new", 200.0, True), archive("old", 100.0, False)
    into = tmp_path / "runs"
    collect.collect_study(new, into)
    assert collect.collect_study(old, into) == []
    job = into / "a-short_po-dpo-s3"
    assert sorted(p.name for p in job.iterdir()) == ["job.json", "metrics.csv", "results.json"]
    into2 = tmp_path / "runs2"
    collect.collect_study(old, into2)
    collect.collect_study(new, into2)
    assert sorted(p.name for p in (into2 / "a-short_po-dpo-s3").iterdir()) == ["job.json", "metrics.csv", "results.json"]
    (into2 / "a-short_po-dpo-s3" / "job.json").write_text(json.dumps({"ended_at": 50.0}))
    collect.collect_study(old, into2)  # the old attempt ended later than this record says: it replaces it, whole
    assert sorted(p.name for p in (into2 / "a-short_po-dpo-s3").iterdir()) == ["failed.json", "job.json"]


def test_with_span_s_the_launcher_outlives_the_call_and_the_next_call_waits_for_it(tmp_path):
    """SPAN_S: the first call starts the launcher in a session of its own and returns at its budget while the
    launcher runs on (no report yet: the study is still moving); the next call starts no second launcher, waits for
    it to end, then reports and archives. The launcher's deadline is the span's, not the call's."""
    # the stand-in launcher takes 4 s; every other step returns at once
    study_dir, out, calls, bin_ = stand_ins(tmp_path, launcher='echo "job line"; sleep 4; echo "last line"')
    (study_dir).mkdir()
    (study_dir / "curve.json").write_text("{}")
    env = dict(os.environ, PYTHON=str(bin_ / "python"), PATH=f"{bin_}:{os.environ['PATH']}", STUDY=str(study_dir),
               OUT=str(out), SOLOPO_CACHE=str(tmp_path / "cache"), RESTORE_RUNS="", SPAN_S="1000")
    first = subprocess.run(["bash", "experiments/decisive/run.sh", "62", "--names", "x"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "runs on after this call" in first.stdout and "job line" in first.stdout
    launches = [line.split() for line in calls.read_text().splitlines() if "launch.py" in line]
    assert len(launches) == 1 and int(launches[0][launches[0].index("--deadline") + 1]) in (939, 940)
    assert not any("report.py" in line for line in calls.read_text().splitlines())
    second = subprocess.run(["bash", "experiments/decisive/run.sh", "100", "--names", "x"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "is running: waiting for it" in second.stdout and "last line" in second.stdout
    lines = calls.read_text().splitlines()
    assert sum("launch.py" in line for line in lines) == 1 and "report.py" in lines[-1]
    assert (out / "decisive.tar.gz").exists() and "runs on after" not in second.stdout


def test_a_launcher_spanning_calls_runs_a_copy_of_the_code_the_next_call_replaces(tmp_path):
    """The machine copies the working tree afresh at each call: a launcher (and its jobs) running on from an earlier
    call must not run the tree itself, which is half-copied at times (a job then failed to import the package). It
    runs a copy made when it started, without the collected runs, first on its PYTHONPATH."""
    tree = tmp_path / "tree"
    for name in ("experiments/decisive/run.sh", "experiments/studies/gpu_call.sh"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tree / name)
    (tree / "solopo").mkdir()
    (tree / "solopo" / "run.py").write_text("")
    (tree / "experiments/decisive/runs/a-job").mkdir(parents=True)
    study_dir, out, calls, bin_ = stand_ins(tmp_path, launcher=(
        'echo "path $PYTHONPATH"; sleep 4; '
        'if [ -e solopo/run.py ]; then echo "code there"; else echo "code gone"; fi'))
    study_dir.mkdir()
    (study_dir / "curve.json").write_text("{}")
    env = dict(os.environ, PYTHON=str(bin_ / "python"), PATH=f"{bin_}:{os.environ['PATH']}", STUDY=str(study_dir),
               OUT=str(out), SOLOPO_CACHE=str(tmp_path / "cache"), RESTORE_RUNS="", SPAN_S="1000",
               PYTHONPATH="/elsewhere")
    first = subprocess.run(["bash", "experiments/decisive/run.sh", "62"], cwd=tree, env=env, capture_output=True,
                           text=True, timeout=60)
    assert "runs on after this call" in first.stdout, first.stdout + first.stderr
    code = Path(f"{study_dir}.code")
    assert f"path {code}:/elsewhere" in first.stdout
    assert (code / "experiments/decisive/run.sh").is_file() and not (code / "experiments/decisive/runs").exists()
    shutil.rmtree(tree / "solopo")  # the next call's copy of the tree, under way
    second = subprocess.run(["bash", "experiments/decisive/run.sh", "100"], cwd=tree, env=env, capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 0 and "code there" in second.stdout, second.stdout + second.stderr


def test_a_stale_launcher_pid_file_is_not_a_running_launcher(tmp_path):
    """launcher.pid naming a live process that is not the launcher (a pid reused since) or a launcher that has ended
    (its status written) does not make a call wait: it starts its own launcher, which ends in the call, and reports."""
    study_dir, out, calls, bin_ = stand_ins(tmp_path)
    study_dir.mkdir()
    (study_dir / "curve.json").write_text("{}")
    other = subprocess.Popen(["sleep", "60"])
    try:
        env = dict(os.environ, PYTHON=str(bin_ / "python"), PATH=f"{bin_}:{os.environ['PATH']}",
                   STUDY=str(study_dir), OUT=str(out), SOLOPO_CACHE=str(tmp_path / "cache"), RESTORE_RUNS="",
                   SPAN_S="1000")
        # another process has the pid (its start time differs); the launcher has ended (its status is written)
        for stale, status in ((f"{other.pid} 1\n", None), (f"{other.pid} {gpu_process_start(other.pid)}\n", "0\n")):
            (study_dir / "launcher.pid").write_text(stale)
            (study_dir / "launcher.rc").unlink(missing_ok=True)
            if status is not None:
                (study_dir / "launcher.rc").write_text(status)
            done = subprocess.run(["bash", "experiments/decisive/run.sh", "100", "--names", "x"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "waiting for it" not in done.stdout, done.stdout + done.stderr
            assert "report.py" in calls.read_text().splitlines()[-1]
    finally:
        other.kill()
    assert sum("launch.py" in line for line in calls.read_text().splitlines()) == 2


def gpu_process_start(pid: int) -> str:
    """A process's start time as gpu_call.sh reads it (field 22 of /proc/PID/stat)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
