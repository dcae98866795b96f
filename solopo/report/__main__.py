"""Turn run directories (a multirun sweep, or several runs) into one comparison table and plots.

    python -m solopo.report multirun/2026-11-29/12-00-00
    python -m solopo.report outputs/a outputs/b --out report/
    python -m solopo.report runs/ --seeds        # runs that differ only in seed: mean ± std

Each row is one run: the config values that differ between the runs (algo, method, alpha, lengths, ...)
against its evaluation scores (sub-EM by context length, the long-context average, before and after
training), validation metrics and timings. Writes report.md, report.csv and PNG plots (accuracy vs length;
score vs alpha when alpha varies). A run directory holding failed.json instead of results.json
({"reason", "detail", "config"}, as a job launcher writes it) is a failed run: its row says why.
Installed, the same entry is the console script `solopo-report`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    from solopo.preflight import program_name

    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories, or folders holding runs at any depth "
                        "(a multirun directory, outputs/)")
    parser.add_argument("--out", type=Path, help="where the report goes (default: the first directory)")
    parser.add_argument("--seeds", action="store_true", help="one row per config: mean ± std over its seeds")
    args = parser.parse_args()
    from solopo.report.runs import find_runs, unrecorded
    from solopo.report.sweep import write_report  # matplotlib: after --help has been answered
    from solopo.report.tables import counted

    out = args.out or args.dirs[0]
    try:
        runs = find_runs(args.dirs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    report = write_report(runs, out, seeds=args.seeds)
    print(out / "report.md")
    groups = f" in {counted(len(report['rows']), 'group')}" if args.seeds else ""
    print(f"{counted(len(runs), 'run')}{groups}; varying: {', '.join(report['keys']) or 'nothing'}")
    if missing := unrecorded(args.dirs):  # not in the report: nothing says how they ended
        print(f"not reported: {counted(len(missing), 'run')} with neither results.json nor failed.json (killed, out "
              f"of memory, or still running): {', '.join(map(str, missing))}")


if __name__ == "__main__":
    main()
