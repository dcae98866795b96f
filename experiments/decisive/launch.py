"""Run the decisive study: every job a `python -m solopo.run` (or `solopo.evaluate`) subprocess, N at a time on one GPU.

    python experiments/decisive/launch.py --root /tmp/decisive --deadline 480
    python experiments/decisive/launch.py --root /tmp/decisive --dry-run         # the commands, nothing run
    python experiments/decisive/launch.py --root /tmp/d --regimes a --main-seeds 0 --names 'a-*-simpo-*' -- model=tiny

The scheduling is paper_mini's job runner (experiments/paper_mini/launch.py: sampling leaders, deadline, out-of-memory
retries, failure records, done jobs skipped), so the same command continues an interrupted study. Regime (b)'s jobs
need <root>/curve.json (experiments/decisive/curve.py): without it they are left for a later call. Words after -- are
Hydra overrides for every job.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.decisive.curve import read_overrides  # noqa: E402
from experiments.decisive.jobs import (ABLATION_SEEDS, MAIN_SEEDS, REGIMES, select, shell,  # noqa: E402
                                       study_jobs, with_lengths)
from experiments.paper_mini import launch as runner  # noqa: E402


def plan(args) -> list:
    """The jobs this call may run: the study's, narrowed by --names; regime (b) only once its length is chosen."""
    split = lambda text: tuple(x for x in (text or "").split(",") if x)  # noqa: E731
    ints = lambda text: tuple(int(x) for x in split(text))  # noqa: E731
    jobs = study_jobs(split(args.regimes), args.ablation_regime, split(args.ablation_algos), ints(args.main_seeds),
                      ints(args.ablation_seeds))
    if "b" in split(args.regimes):
        lengths = read_overrides(args.root / "curve.json")
        if lengths is None:
            print(f"regime (b) waits for {args.root / 'curve.json'} (experiments/decisive/curve.py)", flush=True)
            jobs = [j for j in jobs if j.regime != "b"]
        else:
            jobs = with_lengths(jobs, "b", lengths)
    return select(jobs, split(args.names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="study directory: one run directory per job")
    parser.add_argument("--parallel", type=int, default=6, help="jobs at once")
    parser.add_argument("--samplers", type=int, default=2, help="leaders sampling pairs at once")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds from now; no job starts that "
                        "would end later, and jobs still running then are stopped and run again by the next call")
    parser.add_argument("--job-seconds", type=float, default=120.0, help="expected seconds per job until one of its "
                        "row has finished")
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--ablation-regime", default="a")
    parser.add_argument("--ablation-algos", default="simpo")
    parser.add_argument("--main-seeds", default=",".join(map(str, MAIN_SEEDS)))
    parser.add_argument("--ablation-seeds", default=",".join(map(str, ABLATION_SEEDS)))
    parser.add_argument("--names", help="comma-separated job names or shell patterns, e.g. 'a-solopo-*-s0'")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args()
    args.root = args.root.resolve()
    jobs = plan(args)
    if args.dry_run:
        first = runner.leaders(jobs)
        for job in jobs:
            state = runner.status(args.root, job) or ("leader" if first[job.sampling_key] is job else "")
            print(f"{job.name:<36} {state:<7} {shell(job.command(args.root, 'python', tuple(args.overrides)))}")
        print(f"{len(jobs)} jobs")
        return
    args.root.mkdir(parents=True, exist_ok=True)
    (args.root / "jobs.json").write_text(json.dumps([job.name for job in jobs], indent=1) + "\n")
    records = runner.run(jobs, args.root, args.parallel, args.deadline, args.job_seconds, tuple(args.overrides),
                         args.retry_failed, args.samplers)
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "interrupted")}
    done = sum(runner.status(args.root, j) == "done" for j in jobs)
    print(f"this call: {counts}; study: {done} of {len(jobs)} jobs done", flush=True)


if __name__ == "__main__":
    main()
