"""Run the paper_mini study: every job a `python -m solopo.run` subprocess, N at a time on one GPU.

    python experiments/paper_mini/launch.py --root /tmp/paper_mini --parallel 8 --deadline 520
    python experiments/paper_mini/launch.py --root /tmp/paper_mini --dry-run          # the commands, nothing run
    python experiments/paper_mini/launch.py --root out --only solopo,long_po --seeds 0 -- model=tiny trainer=cpu

The scheduling is the studies' job runner (experiments/studies/runner.py: sampling leaders, deadline, out-of-memory
retries, failure records, done jobs skipped), so the same command continues an interrupted study. Words after -- are
Hydra overrides for every job.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.paper_mini.study import ALGOS, ROWS, SEEDED_ROWS, select, study_jobs  # noqa: E402
from experiments.studies import runner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_options(parser, parallel=8, job_seconds=180.0)
    parser.add_argument("--only", help=f"comma-separated rows ({', '.join(ROWS)})")
    parser.add_argument("--names", help="comma-separated job names or shell patterns, e.g. 'long_po-*-s0,solopo-dpo-a3-s2'")
    parser.add_argument("--algos", help=f"comma-separated algorithms ({', '.join(ALGOS)})")
    parser.add_argument("--seeds", default="0,1,2", help="the first gets every row, the others the seeded rows")
    parser.add_argument("--seeded-rows", default=",".join(SEEDED_ROWS), help="rows repeated at every seed")
    args = parser.parse_args()
    listed = runner.listed
    jobs = select(study_jobs(tuple(int(s) for s in listed(args.seeds)), seeded_rows=listed(args.seeded_rows)),
                  set(listed(args.only)), set(listed(args.algos)), listed(args.names))
    args.root = args.root.resolve()
    runner.launch(jobs, args)


if __name__ == "__main__":
    main()
