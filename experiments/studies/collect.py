"""A GPU call's archive into the repository, and from there onto a fresh machine: a study's state across sessions.

    python experiments/studies/collect.py /path/to/decisive.tar.gz --into experiments/decisive/runs   # after a call
    python experiments/studies/collect.py --restore experiments/decisive/runs --study /tmp/decisive   # gpu_call.sh

Collecting keeps, compact, what a report and a later call need: per job (a folder with the runner's job.json) its
results.json (on one line: indented, the per-case scores take five times the room), job.json, failed.json and
metrics.csv; the study's own small files (curve.json, curve.md, gpu.txt, ...; no logs); and the cache entries of
sampled pairs, evaluations and reference log-probs, under cache/<kind>/. No checkpoints, logs or plots. --study and
--cache name the folders as they were on the GPU machine (the archive holds their paths).

Restoring copies them back, keeping their times, where nothing is yet: the jobs into the study folder (the launcher
skips those done and knows their durations), the cache entries into $SOLOPO_CACHE (a later job of a seed reads its
pairs, its reference log-probs and its base model's evaluation instead of computing them again, on other numbers), and
writes <study>/.restored, after which gpu_call.sh's archive holds only what the machine adds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

CACHE_KINDS = ("pairs", "eval", "reference")  # gpu_call.sh's archive holds these
JOB_FILES = ("results.json", "job.json", "failed.json")
STAMP = ".restored"


def compact(path: Path, dest: Path) -> None:
    """A JSON file again, on one line, keeping its time."""
    dest.write_text(json.dumps(json.loads(path.read_text()), separators=(",", ":"), allow_nan=True) + "\n")
    shutil.copystat(path, dest)


def ended_at(run_dir: Path) -> float:
    """When the job's attempt in ``run_dir`` ended (its job.json), 0 where unknown."""
    try:
        return float(json.loads((run_dir / "job.json").read_text()).get("ended_at") or 0)
    except (OSError, ValueError):
        return 0.0


def collect_study(study: Path, into: Path) -> list[str]:
    """Each job's files and the study's own small files from ``study`` into ``into``; the jobs collected. A job whose
    collected attempt ended later than the archive's is kept (an older archive collected after a newer one)."""
    jobs = []
    for run_dir in sorted(p for p in study.iterdir() if (p / "job.json").is_file()):
        dest = into / run_dir.name
        if ended_at(dest) > ended_at(run_dir):
            print(f"{run_dir.name}: kept the attempt already collected, which ended later than this archive's")
            continue
        for name in (*JOB_FILES, "metrics.csv"):
            (dest / name).unlink(missing_ok=True)  # a job run again leaves no stale record beside its new one
        dest.mkdir(parents=True, exist_ok=True)
        for name in JOB_FILES:
            if (run_dir / name).is_file():
                compact(run_dir / name, dest / name)
        metrics = sorted(run_dir.rglob("metrics.csv"))
        if metrics:
            shutil.copy2(metrics[0], dest / "metrics.csv")
        jobs.append(run_dir.name)
    for path in study.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.suffix in (".json", ".md", ".txt"):
            shutil.copy2(path, into / path.name)
    return jobs


def collect_cache(cache: Path, into: Path) -> int:
    """The cache entries (no lock files) under into/cache/<kind>/; how many."""
    count = 0
    for kind in CACHE_KINDS:
        for entry in sorted((cache / kind).glob("*.json")) if (cache / kind).is_dir() else []:
            (into / "cache" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry, into / "cache" / kind / entry.name)
            count += 1
    return count


def collect(archive: Path, into: Path, study: Path, cache: Path) -> str:
    """Unpack ``archive`` (paths as on the GPU machine) and collect its study and cache into ``into``."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
        root = Path(tmp)
        into.mkdir(parents=True, exist_ok=True)
        jobs = collect_study(root / study.relative_to("/"), into) if (root / study.relative_to("/")).is_dir() else []
        entries = collect_cache(root / cache.relative_to("/"), into)
    return f"{archive}: {len(jobs)} jobs and {entries} cache entries into {into}"


def copy_missing(src: Path, dest: Path) -> int:
    """Every file under ``src`` that ``dest`` lacks, with its time; how many."""
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dest / path.relative_to(src)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            count += 1
    return count


def restore(saved: Path, study: Path, cache: Path) -> str:
    """The collected jobs, study files and cache entries of ``saved`` into place; then the stamp. A folder that holds
    no collected job is refused: the launcher would run every job again, a whole GPU call spent on runs that exist."""
    if not any((path / "job.json").is_file() for path in saved.iterdir()):
        raise SystemExit(f"error: {saved} holds no collected job (a job folder with job.json): nothing to restore; "
                         "check that the runs travelled with the tree, or start without RESTORE_RUNS")
    study.mkdir(parents=True, exist_ok=True)
    files = sum(copy_missing(path, study / path.name) for path in saved.iterdir()
                if path.is_dir() and path.name != "cache")
    for path in (p for p in saved.iterdir() if p.is_file() and not (study / p.name).exists()):
        shutil.copy2(path, study / path.name)
        files += 1
    entries = sum(copy_missing(saved / "cache" / kind, cache / kind) for kind in CACHE_KINDS
                  if (saved / "cache" / kind).is_dir())
    (study / STAMP).write_text("restored from the repository; newer files are this machine's\n")
    return f"restored {files} study files and {entries} cache entries from {saved}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", nargs="?", type=Path, help="a GPU call's archive (gpu_call.sh's)")
    parser.add_argument("--into", type=Path, help="the study's folder of collected runs in the repository")
    parser.add_argument("--restore", type=Path, help="a folder of collected runs to put back in place")
    parser.add_argument("--study", type=Path, default=Path("/tmp/decisive"), help="the study folder on the GPU machine")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("SOLOPO_CACHE", "/tmp/solopo-cache")),
                        help="$SOLOPO_CACHE on the GPU machine")
    args = parser.parse_args()
    if args.restore:
        print(restore(args.restore, args.study, args.cache))
    elif args.archive and args.into:
        print(collect(args.archive, args.into, args.study, args.cache))
    else:
        parser.error("give an archive and --into, or --restore")


if __name__ == "__main__":
    main()
