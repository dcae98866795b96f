#!/usr/bin/env bash
# What a user gets without flags against the best hand-picked cells (issue 24): SoLoPO and Long-PO, DPO, one pair per
# step, short context 1K, each cell at its defaults (packing=auto, model.gradient_checkpointing=auto, model.liger=auto,
# the shipped attention kernel) and in the fastest variant the committed tables measured for it (bench.py --variants
# best), with one profiled step per cell (GPU busy) and the predicted peak memory beside the measured one; then
# summary.py.
#
#   RESULTS=/path/to/results bash experiments/efficiency/run_defaults.sh [BUDGET_S]
#
# The 1.5B shape at 4K-64K first, then the 7B shape at 8K and 16K (the paper's regime: long 7.5-9K, short 1.1K), then
# SmolLM2 at 4K-64K (its real weights: SOLOPO_SMOLLM2_WHEEL where the embedded model's cache is cold). About 6 minutes
# of one H200 by the committed step times; BUDGET_S (540) bounds the call. Every step runs with --resume on RESULTS
# (default experiments/efficiency/results), so a call cut short goes on in the next with the same command. The
# summary reads every table in RESULTS: point it at a copy of results/ to have TRL's rows and the longest-context
# probes beside the defaults. MODELS, LENGTHS, LARGE, LARGE_LENGTHS, SMALL, SHORT, RESPONSE override the grid (none:
# no model; tests/test_benchmarks.py runs it on the CPU with the tiny model).
set -o pipefail
began=$(date +%s)
BUDGET=${1:-540}
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-experiments/efficiency/results}
MODELS=${MODELS:-qwen2.5-1.5b}
LENGTHS=${LENGTHS:-4096,8192,16384,32768,65536}
LARGE=${LARGE:-qwen2.5-7b}
LARGE_LENGTHS=${LARGE_LENGTHS:-8192,16384}
SMALL=${SMALL:-smollm2}
SHORT=${SHORT:-1024}
RESPONSE=${RESPONSE:-64}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
left() { echo $(( BUDGET - ($(date +%s) - began) - 20 )); }  # 20 s kept for the summary

cells() {  # cells MODELS LENGTHS: the defaults and the best hand-picked variant of each cell, within the time left;
  # one bench.py call each, as they load different models (the defaults with model.liger=auto, the others without)
  if [ "$1" = none ]; then return 0; fi
  for variant in defaults best; do
    if [ "$(left)" -le 0 ]; then echo "no time left for $1 ($variant): the next call measures it"; return 0; fi
    timeout --signal=INT --kill-after=20 "$(left)" "$PY" experiments/efficiency/bench.py --tag _defaults --models "$1" \
      --algos dpo --methods solopo,long_po --variants "$variant" --lengths "$2" --max-length-models none \
      --no-logp-memory --warmup 1 --steps 2 --profile --short "$SHORT" --response "$RESPONSE" --resume \
      --out "$RESULTS" 2>&1 | tee -a "$RESULTS/defaults.log"
  done
}

cells "$MODELS" "$LENGTHS"
cells "$LARGE" "$LARGE_LENGTHS"
cells "$SMALL" "$LENGTHS"
"$PY" experiments/efficiency/summary.py --results "$RESULTS"
echo "call took $(( $(date +%s) - began )) s"
