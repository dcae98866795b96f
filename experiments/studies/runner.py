"""The job runner the GPU studies share (paper_mini, decisive): every job a `python -m solopo.run` (or
`solopo.evaluate`) subprocess, N at a time on one GPU, and the options and output of a study's launch.py.

A job whose run directory holds results.json is done and skipped, and one that failed is not retried
(--retry-failed does), so the same command continues an interrupted study. Jobs sharing sampled pairs wait
for the first of them, the key's leader, to be past sampling, reference log-probs and the base model's
evaluation (all cached on disk); at most --samplers leaders sample at once, so the GPU goes to the jobs
first in the study's order. A job is started only if its expected duration (the longest seen so far among
jobs of its timing key: paper_mini's row, decisive's regime and row) fits before --deadline; at the
deadline running jobs are stopped, set aside and rerun by the next call. A job that runs out of GPU memory
beside others is run once more, when at most half of --parallel run. Each job writes launch.log (its
output) and job.json (status, seconds, command); a failed one also writes failed.json (reason, detail,
config; experiments/studies/failures.py), which `python -m solopo.report` shows as a row.

What a study brings is its jobs (the Job contract below), their order and its own options.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from experiments.studies.failures import failure_record
from solopo.cache import atomic_write_text
from solopo.report.runs import unfinished

ROOT = Path(__file__).resolve().parents[2]

LEADER_FACTOR = 1.5  # a leader also samples the pairs and evaluates the base model
# Lightning's first line, printed when a run builds its Trainer: by then its pairs, reference log-probs and the
# base model's evaluation are on disk for the jobs that share them.
READY_MARK = "GPU available:"


class Job(Protocol):
    """One run of a study, as the runner sees it; a study's Job dataclass (frozen: jobs are dict keys) has these."""

    @property
    def name(self) -> str: ...  # its run directory under the study's root

    @property
    def row(self) -> str: ...

    @property
    def algo(self) -> str | None: ...

    @property
    def alpha(self) -> float | None: ...

    @property
    def seed(self) -> int: ...

    @property
    def sampling_key(self) -> tuple: ...  # jobs of one key sample the same pairs: the first samples, the others wait

    @property
    def samples(self) -> bool: ...  # whether the job samples pairs (an evaluation-only job does not)

    @property
    def timing_key(self) -> tuple: ...  # jobs of one key take about as long: a job's estimate is its key's longest

    def command(self, root: Path, python: str = "python", extra: tuple[str, ...] = ()) -> list[str]: ...


def shell(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def listed(text: str | None) -> tuple[str, ...]:
    """A comma-separated option's words (``"a,b,"`` -> ``("a", "b")``; none for an empty or absent option)."""
    return tuple(x for x in (text or "").split(",") if x)


def named(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` matches one of the shell patterns (``long_po-*-s0``); every name does when there are none."""
    return not patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def status(root: Path, job: Job) -> str | None:
    """done, failed, or None (never run, or interrupted: run again). failed.json first: a run that wrote results.json
    and then exited non-zero (stopped on non-finite steps) failed; a preempted one runs again."""
    run_dir = root / job.name
    if (run_dir / "failed.json").exists():
        return "failed"
    if not (run_dir / "results.json").exists():
        return None
    results = json.loads((run_dir / "results.json").read_text())
    if unfinished(results) is None:
        return "done"
    return None if results.get("preempted") else "failed"


def leaders(jobs: list[Job]) -> dict[tuple, Job]:
    """The first job of each sampling key, which the others of the key wait for."""
    first: dict[tuple, Job] = {}
    for job in jobs:
        first.setdefault(job.sampling_key, job)
    return first


def history(root: Path, jobs: list[Job]) -> dict[tuple[tuple, bool], float]:
    """The longest duration seen per (timing key, leader) in earlier calls, from the job.json files of ``jobs``."""
    longest: dict[tuple[tuple, bool], float] = {}
    for job in jobs:
        path = root / job.name / "job.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        if record.get("status") in ("done", "failed"):  # a leader without pairs still took its sampling time
            key = (job.timing_key, record["leader"])
            longest[key] = max(longest.get(key, 0.0), record["seconds"])
    return longest


def released(leader: Job, root: Path, state: str | None) -> bool:
    """Whether the jobs sharing ``leader``'s pairs may start: it has ended, or its log shows it is past the
    cached steps."""
    log = root / leader.name / "launch.log"
    if state in ("done", "failed"):
        return True
    # The log's first line is the command; the mark counts only in what the run printed.
    return log.exists() and READY_MARK in log.read_text(errors="replace").partition("\n")[2]


def estimate(job: Job, leader: bool, seen: dict, default_s: float) -> float:
    known = seen.get((job.timing_key, leader))
    return known if known is not None else default_s * (LEADER_FACTOR if leader else 1.0)


def set_aside(root: Path, job: Job) -> Path:
    """Move an unfinished attempt to root/.partial/, where neither the launcher nor a report counts it; where it went."""
    run_dir = root / job.name
    partial = root / ".partial" / f"{job.name}.{int(time.time())}"
    if run_dir.exists():
        partial.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir), partial)
    return partial


def start(job: Job, root: Path, command: list[str], threads: int) -> subprocess.Popen:
    run_dir = root / job.name
    set_aside(root, job)  # the job starts afresh
    run_dir.mkdir(parents=True)
    # TF32 matmuls: sampling and evaluation run the model's float32 weights outside autocast, in full float32
    # otherwise (several times slower on the GPU); training runs under bf16 autocast either way.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               HYDRA_FULL_ERROR="1", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True",
               TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(run_dir / "launch.log", "w") as log:
        log.write(f"$ {shell(command)}\n")
        log.flush()
        # A session of its own, so that stopping a job at the deadline reaches its children too.
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(job: Job, root: Path, proc: subprocess.Popen, started: float, leader: bool, command: list[str],
           interrupted: bool = False) -> dict:
    run_dir = root / job.name
    record = {"name": job.name, "row": job.row, "algo": job.algo, "alpha": job.alpha, "seed": job.seed,
              "leader": leader, "command": shell(command), "returncode": proc.returncode,
              "seconds": round(time.monotonic() - started, 1), "ended_at": round(time.time(), 1)}
    done = (run_dir / "results.json").exists() and proc.returncode == 0
    record["status"] = "interrupted" if interrupted else "done" if done else "failed"
    if interrupted:  # set aside first, its record beside it there: an archive made meanwhile must not collect it
        run_dir = set_aside(root, job)
    elif record["status"] == "failed":
        failed = failure_record((run_dir / "launch.log").read_text(errors="replace"), proc.returncode, run_dir)
        atomic_write_text(run_dir / "failed.json", json.dumps(failed, indent=1) + "\n")
        record["reason"] = failed["reason"]
    # whole or absent (an archive may be made while jobs end); failed.json before it: job.json marks the job ended
    atomic_write_text(run_dir / "job.json", json.dumps(record, indent=1) + "\n")
    return record


def stop(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """SIGTERM to each job's process group (a training run writes its state and exits), SIGKILL after grace_s."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    limit = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stop_at_deadline(running: dict, root: Path, first: dict, say) -> list[dict]:
    """Stops the jobs still running at the deadline; their records, each marked interrupted (they run again in the
    next call)."""
    stop([proc for proc, _, _ in running.values()])
    records = []
    for job, (proc, started, command) in running.items():
        # set aside with its record (finish): a run stopped in training leaves a results.json marked preempted
        records.append(finish(job, root, proc, started, first[job.sampling_key] is job, command, interrupted=True))
        say(f"stopped {job.name} at the deadline: it runs again in the next call")
    return records


def retry_if_crowded(job: Job, record: dict, root: Path, running: dict, retried: set, pending: list) -> bool:
    """A job out of memory beside jobs still running goes back to the front of the queue, once, marked retried: the
    GPU was shared, a transient rather than the job's own size."""
    if record.get("reason") != "out of memory" or not running or job in retried:
        return False
    retried.add(job)
    (root / job.name / "failed.json").unlink()
    record["status"] = "retried"
    pending.insert(0, job)
    return True


def run(jobs: list[Job], root: Path, parallel: int, deadline_s: float, default_s: float, extra: tuple[str, ...],
        retry_failed: bool = False, samplers: int = 2, poll_s: float = 2.0) -> list[dict]:
    began = time.monotonic()
    first = leaders(jobs)
    states = {job: status(root, job) for job in jobs}
    pending = [j for j in jobs if states[j] is None or (retry_failed and states[j] == "failed")]
    seen, records, free = history(root, jobs), [], set()  # free: sampling keys whose leader is released
    retried: set[Job] = set()  # out of memory beside other jobs: run once more, with fewer beside it
    retry_below = max(1, parallel // 2)  # a retried job starts when fewer than this many run
    running: dict[Job, tuple[subprocess.Popen, float, list[str]]] = {}
    threads = max(1, (os.cpu_count() or 2) // parallel)
    say = lambda text: print(f"[{time.monotonic() - began:6.0f}s] {text}", flush=True)  # noqa: E731
    say(f"{len(jobs)} jobs: {len(jobs) - len(pending)} already done or failed, {len(pending)} to run")
    while pending or running:
        for job, (proc, started, command) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[job]
            leader = first[job.sampling_key] is job
            records.append(finish(job, root, proc, started, leader, command))
            states[job] = records[-1]["status"]
            if retry_if_crowded(job, records[-1], root, running, retried, pending):
                states[job] = None
                say(f"retry  {job.name} ({records[-1]['seconds']:.0f}s): out of memory beside {len(running)} other "
                    f"jobs; it starts again when at most {retry_below - 1} others run")
                continue
            key = (job.timing_key, leader)
            seen[key] = max(seen.get(key, 0.0), records[-1]["seconds"])
            say(f"{states[job]:<6} {job.name} ({records[-1]['seconds']:.0f}s)"
                + (f": {records[-1]['reason']}" if "reason" in records[-1] else ""))
        free |= {key for key, leader in first.items() if key not in free and released(leader, root, states[leader])}
        left = deadline_s - (time.monotonic() - began)
        if left <= 0:
            records += stop_at_deadline(running, root, first, say)
            break
        sampling = sum(first[j.sampling_key] is j and j.samples and j.sampling_key not in free for j in running)
        for job in list(pending):
            if len(running) >= parallel:
                break
            leader = first[job.sampling_key]
            if leader is not job and job.sampling_key not in free:
                continue  # its pairs are being sampled (or will be) by the leader
            if leader is job and job.samples and job.sampling_key not in free and sampling >= samplers:
                continue  # enough sampling at once: the slots go to jobs that have their pairs
            if estimate(job, leader is job, seen, default_s) > left:
                continue  # cannot finish before the deadline; a shorter job further down may
            if job in retried and len(running) >= retry_below:
                continue
            command = job.command(root, sys.executable, extra)
            running[job] = (start(job, root, command, threads), time.monotonic(), command)
            pending.remove(job)
            sampling += leader is job and job.samples and job.sampling_key not in free
            say(f"start  {job.name}")
        if not running:
            break  # what is left waits for a leader that cannot start, or does not fit before the deadline
        time.sleep(poll_s)
    if pending:
        say(f"not started ({len(pending)}; the next call runs them): {', '.join(job.name for job in pending)}")
    return records


def add_options(parser: argparse.ArgumentParser, parallel: int, job_seconds: float) -> None:
    """The runner's options of a study's launch.py, with the study's defaults for --parallel and --job-seconds."""
    parser.add_argument("--root", type=Path, required=True, help="study directory: one run directory per job")
    parser.add_argument("--parallel", type=int, default=parallel, help="jobs at once")
    parser.add_argument("--samplers", type=int, default=2, help="leaders sampling pairs at once")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds from now; no job starts that "
                        "would end later, and jobs still running then are stopped and run again by the next call")
    parser.add_argument("--job-seconds", type=float, default=job_seconds, help="expected seconds per job until one of "
                        "the same row has finished (leaders: x%.1f)" % LEADER_FACTOR)
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")


def launch(jobs: list[Job], args: argparse.Namespace) -> None:
    """What a study's launch.py does with its jobs and add_options' arguments: with --dry-run, print each job, its
    state and its command; else write <root>/jobs.json, run the jobs, and print this call's and the study's counts."""
    extra = tuple(args.overrides)
    if args.dry_run:
        first, width = leaders(jobs), max((len(job.name) for job in jobs), default=0) + 1
        for job in jobs:
            state = status(args.root, job) or ("leader" if first[job.sampling_key] is job else "")
            print(f"{job.name:<{width}} {state:<7} {shell(job.command(args.root, 'python', extra))}")
        print(f"{len(jobs)} jobs")
        return
    args.root.mkdir(parents=True, exist_ok=True)
    (args.root / "jobs.json").write_text(json.dumps([job.name for job in jobs], indent=1) + "\n")
    records = run(jobs, args.root, args.parallel, args.deadline, args.job_seconds, extra, args.retry_failed,
                  args.samplers)
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "interrupted")}
    print(f"this call: {counts}; study: {sum(status(args.root, j) == 'done' for j in jobs)} of {len(jobs)} jobs done",
          flush=True)
