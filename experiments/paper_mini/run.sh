#!/usr/bin/env bash
# One GPU call of the paper_mini study; the same command again continues where the last one stopped.
#
#   bash experiments/paper_mini/run.sh [BUDGET_S] [launch.py options, e.g. --only solopo,long_po]
#
# BUDGET_S (560): seconds this script may take; the launcher gets what is left after the set-up, less 60 s
# for stopping jobs, the report and the archive. Environment: experiments/studies/gpu_call.sh's (PYTHONPATH,
# SOLOPO_SMOLLM2_WHEEL, SOLOPO_CACHE, RESTORE), and STUDY (/tmp/paper_mini), OUT (where the archive goes).
# Everything small (results.json, job records, logs, metrics.csv, the report) ends up in ONE archive,
# $OUT/paper_mini.tar.gz.
set -o pipefail
source "$(dirname "$0")/../studies/gpu_call.sh"
gpu_call_begin paper_mini 560 "${1:-}"
shift || true

gpu_call_launch $PY experiments/paper_mini/launch.py --root "$STUDY" --parallel "${PARALLEL:-8}" \
  --deadline "$(gpu_call_deadline)" "$@"
gpu_call_launcher_alive || $PY experiments/paper_mini/report.py "$STUDY" --paper experiments/paper_mini/paper.json \
  --out "$STUDY/report" > "$STUDY/report.log" 2>&1 || tail -5 "$STUDY/report.log"
gpu_call_archive
