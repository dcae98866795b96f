"""A GPU call of a study (experiments/studies/gpu_call.sh through each study's run.sh) with stand-ins for python and
nvidia-smi: its set-up, the archive of what it ran, collected into the repository and restored on a fresh machine, and
a launcher spanning calls (SPAN_S)."""
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    assert done.returncode == 0 and "launcher.pid" not in done.stderr, done.stdout + done.stderr  # no launcher: no noise
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
