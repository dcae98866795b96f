#!/usr/bin/env bash
# One GPU part of the decisive study (<= 9 minutes); the same command again continues where the last part stopped.
#
#   bash experiments/decisive/run.sh [BUDGET_S] [launch.py options, e.g. --part 3 or --names 'a-*-s0']
#
# BUDGET_S (540): seconds this part may take; the launcher gets what is left after the set-up, less 60 s for stopping
# jobs, the report and the archive. The first part also measures the base model's accuracy-by-length curve that
# chooses regime (b)'s length (curve.py), once. Generation's speed is experiments/sampling/results/speed.md's.
# Environment: experiments/studies/gpu_call.sh's (PYTHONPATH, SOLOPO_SMOLLM2_WHEEL, SOLOPO_CACHE, RESTORE="a.tar.gz
# ...": earlier archives, unpacked first, in order; RESTORE_RUNS, by default experiments/decisive/runs: the runs and
# cache entries collected into the repository by earlier sessions), and STUDY (/tmp/decisive), OUT.
# Everything small that this machine made ends up in ONE archive, $OUT/decisive.tar.gz; collect it into the
# repository after the call (experiments/studies/collect.py, README's "Running it").
set -o pipefail
source "$(dirname "$0")/../studies/gpu_call.sh"
# curve.py's evaluation runs the float32 weights outside autocast: TF32 matmuls, as the jobs get them
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
export RESTORE_RUNS=${RESTORE_RUNS-experiments/decisive/runs}
gpu_call_begin decisive 540 "${1:-}"
shift || true

[ -e "$STUDY/curve.json" ] || $PY experiments/decisive/curve.py --root "$STUDY" > "$STUDY/curve.log" 2>&1 \
  || tail -5 "$STUDY/curve.log"

gpu_call_launch $PY experiments/decisive/launch.py --root "$STUDY" --parallel "${PARALLEL:-6}" \
  --deadline "$(gpu_call_deadline)" "$@"
gpu_call_launcher_alive || $PY experiments/decisive/report.py "$STUDY" --out "$STUDY/report" \
  > "$STUDY/report.log" 2>&1 || tail -5 "$STUDY/report.log"
gpu_call_archive
