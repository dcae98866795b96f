#!/usr/bin/env bash
# One GPU part of the decisive study (<= 9 minutes); the same command again continues where the last part stopped.
#
#   bash experiments/decisive/run.sh [BUDGET_S] [launch.py options, e.g. --names 'a-*-s0']
#
# BUDGET_S (540): seconds this part may take; the launcher gets what is left after the set-up, less 60 s for stopping
# jobs, the report and the archive. The first part also measures generation speed (experiments/sampling/speed.py)
# and the base model's accuracy-by-length curve that chooses regime (b)'s length (curve.py), once each.
# Environment as paper_mini's run.sh: PYTHONPATH with hydra-core, omegaconf, antlr4 and gguf where they are not
# installed; SOLOPO_SMOLLM2_WHEEL on a cold model cache; STUDY (/tmp/decisive), SOLOPO_CACHE (/tmp/solopo-cache), OUT;
# RESTORE="a.tar.gz ...": on a fresh machine, the earlier parts' archives, unpacked first, in order.
# Everything small ends up in ONE archive, $OUT/decisive.tar.gz.
set -o pipefail
began=$(date +%s)
BUDGET=${1:-540}
shift || true
PY=${PYTHON:-python3}
STUDY=${STUDY:-/tmp/decisive}
OUT=${OUT:-/tmp/decisive_out}
export SOLOPO_CACHE=${SOLOPO_CACHE:-/tmp/solopo-cache}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
mkdir -p "$STUDY" "$SOLOPO_CACHE" "$OUT"

if [ -n "${RESTORE:-}" ] && [ ! -e "$STUDY/jobs.json" ]; then
  for archive in $RESTORE; do
    tar -xzf "$archive" -C / && echo "restored $archive" || exit 1
  done
fi
$PY -c "from solopo.models.embedded import SMOLLM2_135M, ensure_weights; print(ensure_weights(SMOLLM2_135M))" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$STUDY/gpu.txt" 2>&1
[ -e "$STUDY/speed/speed.json" ] || $PY experiments/sampling/speed.py --out "$STUDY/speed" 2>&1 | tail -8
[ -e "$STUDY/curve.json" ] || $PY experiments/decisive/curve.py --root "$STUDY" > "$STUDY/curve.log" 2>&1 \
  || tail -5 "$STUDY/curve.log"

left=$(( BUDGET - ($(date +%s) - began) - 60 ))
$PY experiments/decisive/launch.py --root "$STUDY" --parallel "${PARALLEL:-6}" --deadline "$left" "$@" \
  2>&1 | tee -a "$STUDY/launch.log"
$PY experiments/decisive/report.py "$STUDY" --out "$STUDY/report" > "$STUDY/report.log" 2>&1 || tail -5 "$STUDY/report.log"
tar -czf "$OUT/decisive.tar.gz" --ignore-failed-read --exclude='*.ckpt' --exclude='.partial' \
  --exclude='eval_*.png' -C / "${STUDY#/}" "${SOLOPO_CACHE#/}/pairs" "${SOLOPO_CACHE#/}/eval" "${SOLOPO_CACHE#/}/reference"
ls -la "$OUT"
echo "part took $(( $(date +%s) - began )) s"
