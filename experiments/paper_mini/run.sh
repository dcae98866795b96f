#!/usr/bin/env bash
# One GPU call of the paper_mini study; the same command again continues where the last one stopped.
#
#   bash experiments/paper_mini/run.sh [BUDGET_S] [launch.py options, e.g. --only solopo,long_po]
#
# BUDGET_S (560): seconds this script may take; the launcher gets what is left after the set-up, less 60 s
# for stopping jobs, the report and the archive. Environment: PYTHONPATH with hydra-core, omegaconf, antlr4
# and gguf where they are not installed; SOLOPO_SMOLLM2_WHEEL (the GGUF or its wheel) on a machine whose model
# cache is cold; STUDY (/tmp/paper_mini), SOLOPO_CACHE (/tmp/solopo-cache), OUT (where the archive goes);
# RESTORE="a.tar.gz b.tar.gz": on a fresh machine, unpack earlier calls' archives first, in that order (their
# results and the sampling, reference and evaluation caches), so that only the rest runs; an archive holds what its
# machine had, so name every machine's last one.
# Everything small (results.json, job records, logs, metrics.csv, the report) ends up in ONE archive,
# $OUT/paper_mini.tar.gz.
set -o pipefail
began=$(date +%s)
BUDGET=${1:-560}
shift || true
PY=${PYTHON:-python3}
STUDY=${STUDY:-/tmp/paper_mini}
OUT=${OUT:-/tmp/paper_mini_out}
export SOLOPO_CACHE=${SOLOPO_CACHE:-/tmp/solopo-cache}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$STUDY" "$SOLOPO_CACHE" "$OUT"

if [ -n "${RESTORE:-}" ] && [ ! -e "$STUDY/jobs.json" ]; then
  for archive in $RESTORE; do
    tar -xzf "$archive" -C / && echo "restored $archive" || exit 1
  done
fi
# Dequantise the GGUF once, before the jobs start: concurrent first runs would each build the model cache.
$PY -c "from solopo.models.embedded import SMOLLM2_135M, ensure_weights; print(ensure_weights(SMOLLM2_135M))" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$STUDY/gpu.txt" 2>&1

left=$(( BUDGET - ($(date +%s) - began) - 60 ))
$PY experiments/paper_mini/launch.py --root "$STUDY" --parallel "${PARALLEL:-8}" --deadline "$left" "$@" \
  2>&1 | tee -a "$STUDY/launch.log"
$PY experiments/paper_mini/report.py "$STUDY" --paper experiments/paper_mini/paper.json --out "$STUDY/report" \
  > "$STUDY/report.log" 2>&1 || tail -5 "$STUDY/report.log"
tar -czf "$OUT/paper_mini.tar.gz" --ignore-failed-read --exclude='*.ckpt' --exclude='.partial' \
  --exclude='eval_*.png' -C / "${STUDY#/}" "${SOLOPO_CACHE#/}/pairs" "${SOLOPO_CACHE#/}/eval" "${SOLOPO_CACHE#/}/reference"
ls -la "$OUT"
echo "call took $(( $(date +%s) - began )) s"
