#!/usr/bin/env bash
# One GPU part of the decisive study (<= 9 minutes); the same command again continues where the last part stopped.
#
#   bash experiments/decisive/run.sh [BUDGET_S] [launch.py options, e.g. --names 'a-*-s0']
#
# BUDGET_S (540): seconds this part may take; the launcher gets what is left after the set-up, less 60 s for stopping
# jobs, the report and the archive. The first part also measures generation speed (experiments/sampling/speed.py)
# and the base model's accuracy-by-length curve that chooses regime (b)'s length (curve.py), once each.
# Environment: experiments/studies/gpu_call.sh's (PYTHONPATH, SOLOPO_SMOLLM2_WHEEL, SOLOPO_CACHE, RESTORE="a.tar.gz
# ...": the earlier parts' archives, unpacked first, in order), and STUDY (/tmp/decisive), OUT.
# Everything small ends up in ONE archive, $OUT/decisive.tar.gz.
set -o pipefail
source "$(dirname "$0")/../studies/gpu_call.sh"
# speed.py and curve.py's evaluation run the float32 weights outside autocast: TF32 matmuls, as the jobs get them
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
gpu_call_begin decisive 540 "${1:-}"
shift || true

[ -e "$STUDY/speed/speed.json" ] || $PY experiments/sampling/speed.py --out "$STUDY/speed" 2>&1 | tail -8
[ -e "$STUDY/curve.json" ] || $PY experiments/decisive/curve.py --root "$STUDY" > "$STUDY/curve.log" 2>&1 \
  || tail -5 "$STUDY/curve.log"

$PY experiments/decisive/launch.py --root "$STUDY" --parallel "${PARALLEL:-6}" --deadline "$(gpu_call_seconds_left)" \
  "$@" 2>&1 | tee -a "$STUDY/launch.log"
$PY experiments/decisive/report.py "$STUDY" --out "$STUDY/report" > "$STUDY/report.log" 2>&1 || tail -5 "$STUDY/report.log"
gpu_call_archive
