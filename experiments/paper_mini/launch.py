"""Run the paper_mini study: every job a `python -m solopo.run` subprocess, N at a time on one GPU.

    python experiments/paper_mini/launch.py --root /tmp/paper_mini --parallel 8 --deadline 520
    python experiments/paper_mini/launch.py --root /tmp/paper_mini --dry-run          # the commands, nothing run
    python experiments/paper_mini/launch.py --root out --only solopo,long_po --seeds 0 -- model=tiny trainer=cpu

A job whose run directory holds results.json is done and skipped, and one that failed is not retried
(--retry-failed does), so the same command continues an interrupted study. Jobs sharing sampled pairs wait
for the first of them, the key's leader, to be past sampling, reference log-probs and the base model's
evaluation (all cached on disk); at most --samplers leaders sample at once, so the GPU goes to the jobs
first in the study's order. A job is started only if its expected duration fits before --deadline; at the
deadline running jobs are stopped, set aside and rerun by the next call. A job that runs out of GPU memory
beside others is run once more, when at most half of --parallel run. Each job writes launch.log (its
output) and job.json (status, seconds, command); a failed one also writes failed.json (reason, detail,
config), which `python -m solopo.report` shows as a row. Words after -- are Hydra overrides for every job.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from failures import failure_record  # noqa: E402
from study import ALGOS, ROWS, SEEDED_ROWS, Job, select, shell, study_jobs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LEADER_FACTOR = 1.5  # a leader also samples the pairs and evaluates the base model
# Lightning's first line, printed when a run builds its Trainer: by then its pairs, reference log-probs and the
# base model's evaluation are on disk for the jobs that share them.
READY_MARK = "GPU available:"


def status(root: Path, job: Job) -> str | None:
    """done, failed, or None (never run, or interrupted: run again)."""
    run_dir = root / job.name
    results = run_dir / "results.json"
    if results.exists() and "preempted" not in json.loads(results.read_text()):
        return "done"
    return "failed" if (run_dir / "failed.json").exists() else None


def leaders(jobs: list[Job]) -> dict[tuple, Job]:
    """The first job of each sampling key, which the others of the key wait for."""
    first: dict[tuple, Job] = {}
    for job in jobs:
        first.setdefault(job.sampling_key, job)
    return first


def history(root: Path) -> dict[tuple[str, bool], float]:
    """The longest duration seen per (row, leader) in earlier calls, from the jobs' job.json files."""
    longest: dict[tuple[str, bool], float] = {}
    for path in root.glob("*/job.json"):
        record = json.loads(path.read_text())
        if record.get("status") in ("done", "failed"):  # a leader without pairs still took its sampling time
            key = (record["row"], record["leader"])
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
    known = seen.get((job.row, leader))
    return known if known is not None else default_s * (LEADER_FACTOR if leader else 1.0)


def set_aside(root: Path, job: Job) -> None:
    """Move an unfinished attempt to root/.partial/, where neither the launcher nor a report counts it."""
    run_dir = root / job.name
    if run_dir.exists():
        partial = root / ".partial" / f"{job.name}.{int(time.time())}"
        partial.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir), partial)


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
    if record["status"] == "failed":
        failed = failure_record((run_dir / "launch.log").read_text(errors="replace"), proc.returncode, run_dir)
        (run_dir / "failed.json").write_text(json.dumps(failed, indent=1) + "\n")
        record["reason"] = failed["reason"]
    (run_dir / "job.json").write_text(json.dumps(record, indent=1) + "\n")
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


def run(jobs: list[Job], root: Path, parallel: int, deadline_s: float, default_s: float, extra: tuple[str, ...],
        retry_failed: bool = False, samplers: int = 2, poll_s: float = 2.0) -> list[dict]:
    began = time.monotonic()
    first = leaders(jobs)
    states = {job: status(root, job) for job in jobs}
    pending = [j for j in jobs if states[j] is None or (retry_failed and states[j] == "failed")]
    seen, records, free = history(root), [], set()  # free: sampling keys whose leader is released
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
            if records[-1].get("reason") == "out of memory" and running and job not in retried:
                # The GPU was shared with the jobs still running: a transient, not the job's own size.
                retried.add(job)
                (root / job.name / "failed.json").unlink()
                records[-1]["status"], states[job] = "retried", None
                pending.insert(0, job)
                say(f"retry  {job.name} ({records[-1]['seconds']:.0f}s): out of memory beside {len(running)} other "
                    f"jobs; it starts again when at most {retry_below - 1} others run")
                continue
            seen[(job.row, leader)] = max(seen.get((job.row, leader), 0.0), records[-1]["seconds"])
            say(f"{states[job]:<6} {job.name} ({records[-1]['seconds']:.0f}s)"
                + (f": {records[-1]['reason']}" if "reason" in records[-1] else ""))
        free |= {key for key, leader in first.items() if key not in free and released(leader, root, states[leader])}
        left = deadline_s - (time.monotonic() - began)
        if left <= 0:
            stop([proc for proc, _, _ in running.values()])
            for job, (proc, started, command) in running.items():
                records.append(finish(job, root, proc, started, first[job.sampling_key] is job, command, interrupted=True))
                set_aside(root, job)  # a run stopped in training leaves a results.json marked preempted
                say(f"stopped {job.name} at the deadline: it runs again in the next call")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="study directory: one run directory per job")
    parser.add_argument("--parallel", type=int, default=8, help="jobs at once")
    parser.add_argument("--samplers", type=int, default=2, help="leaders sampling pairs at once")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds from now; no job starts that "
                        "would end later, and jobs still running then are stopped")
    parser.add_argument("--job-seconds", type=float, default=180.0, help="expected seconds per job until one of the "
                        "same row has finished (leaders: x%.1f)" % LEADER_FACTOR)
    parser.add_argument("--only", help=f"comma-separated rows ({', '.join(ROWS)})")
    parser.add_argument("--names", help="comma-separated job names or shell patterns, e.g. 'long_po-*-s0,solopo-dpo-a3-s2'")
    parser.add_argument("--algos", help=f"comma-separated algorithms ({', '.join(ALGOS)})")
    parser.add_argument("--seeds", default="0,1,2", help="the first gets every row, the others the seeded rows")
    parser.add_argument("--seeded-rows", default=",".join(SEEDED_ROWS), help="rows repeated at every seed")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args()
    split = lambda text: tuple(x for x in (text or "").split(",") if x)  # noqa: E731
    jobs = select(study_jobs(tuple(int(s) for s in split(args.seeds)), seeded_rows=split(args.seeded_rows)),
                  set(split(args.only)), set(split(args.algos)), split(args.names))
    args.root = args.root.resolve()
    if args.dry_run:
        first = leaders(jobs)
        for job in jobs:
            state = status(args.root, job) or ("leader" if first[job.sampling_key] is job else "")
            print(f"{job.name:<28} {state:<7} {shell(job.command(args.root, 'python', tuple(args.overrides)))}")
        return
    args.root.mkdir(parents=True, exist_ok=True)
    (args.root / "jobs.json").write_text(json.dumps([job.name for job in jobs], indent=1) + "\n")
    records = run(jobs, args.root, args.parallel, args.deadline, args.job_seconds, tuple(args.overrides),
                  args.retry_failed, args.samplers)
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "interrupted")}
    print(f"this call: {counts}; study: {sum(status(args.root, j) == 'done' for j in jobs)} of {len(jobs)} jobs done",
          flush=True)


if __name__ == "__main__":
    main()
