"""Run the decisive study: every job a `python -m solopo.run` (or `solopo.evaluate`) subprocess, N at a time on one GPU.

    python experiments/decisive/launch.py --root /tmp/decisive --part 3 --deadline 480
    python experiments/decisive/launch.py --root /tmp/decisive --dry-run         # the commands, nothing run
    python experiments/decisive/launch.py --root /tmp/d --regimes a --main-seeds 0 --names 'a-*-simpo-*' -- model=tiny

The scheduling is the studies' job runner (experiments/studies/runner.py: sampling leaders, deadline, out-of-memory
retries, failure records, done jobs skipped), so the same command continues an interrupted study. --part K runs the
jobs of parts 1 to K (estimate.py's plan: whole units, at most 9 minutes each at measured rates) that are not done
yet, earlier parts' leftovers first. Regime (b)'s jobs need <root>/curve.json (experiments/decisive/curve.py): without
it they are left for a later call, and the parts are counted at its default length. Words after -- are Hydra overrides
for every job.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.decisive.curve import DEFAULT_LENGTH, overrides, read_overrides  # noqa: E402
from experiments.decisive.estimate import in_parts  # noqa: E402
from experiments.decisive.jobs import (ABLATION_SEEDS, MAIN_SEEDS, REGIMES, select, study_jobs,  # noqa: E402
                                       with_lengths)
from experiments.studies import runner  # noqa: E402


def plan(args) -> list:
    """The jobs this call may run: the study's, narrowed by --names; regime (b) only once its length is chosen."""
    split = runner.listed
    ints = lambda text: tuple(int(x) for x in split(text))  # noqa: E731
    jobs = study_jobs(split(args.regimes), args.ablation_regime, split(args.ablation_algos), ints(args.main_seeds),
                      ints(args.ablation_seeds))
    lengths = read_overrides(args.root / "curve.json")
    if "b" in split(args.regimes) and lengths is None:  # before the parts: regime (a)'s jobs then fill them
        print(f"regime (b) waits for {args.root / 'curve.json'} (experiments/decisive/curve.py) to choose its length",
              flush=True)
        jobs = [j for j in jobs if j.regime != "b"]
    jobs = with_lengths(jobs, "b", lengths or overrides(DEFAULT_LENGTH))
    if args.part:
        jobs = [job for part in in_parts(jobs)[0][:args.part] for job in part]
    return select(jobs, split(args.names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_options(parser, parallel=6, job_seconds=120.0)
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--ablation-regime", default="a")
    parser.add_argument("--ablation-algos", default="simpo")
    parser.add_argument("--main-seeds", default=",".join(map(str, MAIN_SEEDS)))
    parser.add_argument("--ablation-seeds", default=",".join(map(str, ABLATION_SEEDS)))
    parser.add_argument("--names", help="comma-separated job names or shell patterns, e.g. 'a-solopo-*-s0'")
    parser.add_argument("--part", type=int, help="run parts 1 to PART of estimate.py's plan (what is not done yet)")
    args = parser.parse_args()
    args.root = args.root.resolve()
    runner.launch(plan(args), args)


if __name__ == "__main__":
    main()
