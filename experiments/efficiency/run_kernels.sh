#!/usr/bin/env bash
# Fused kernels and memory savers on one GPU (bench.py variants, tables tagged _kernels): SoLoPO, DPO, the 1.5B shape at
# 8K-32K, padded rows through SDPA's flash kernel (the baseline) against SDPA's cuDNN kernel, Liger's kernels, regional
# compilation and the memory savers (chunked MLPs, layer inputs offloaded to host memory); then the longest context with
# the savers, trying 512K then 1M.
#
#   RESULTS=/path/to/folder bash experiments/efficiency/run_kernels.sh [BUDGET_S]
#
# Every call runs with --resume on RESULTS: what is there is kept and only the missing cells are measured, so a call
# cut short by BUDGET_S (540) goes on in the next. A longest-context step cannot be split: on an H200 the 512K step
# took 216 s without the savers (README), and 1M does four times its attention work, about 15 minutes, longer than a
# call of a 10-minute device lease: with SPAN_S=SECONDS the probe runs on after the call, in a process session of its
# own on a copy of the code, to SPAN_S after the call that started it (experiments/studies/gpu_call.sh's launcher
# spanning calls; its state and log in SPAN_DIR, /tmp/solopo_kernels_span), and the next call with the same SPAN_S
# waits for it, measuring nothing else meanwhile (the GPU is the probe's). Liger is installed from the wheel in WHEELS
# (gpuwheels/) where it is missing, and skipped on a machine that cannot run it. MODEL, LENGTHS, PROBE_LENGTHS and
# SHORT exist for the CPU dry run (tests/test_benchmarks.py); LENGTHS= (empty) measures no grid cell, only the probe.
set -o pipefail
began=$(date +%s)
BUDGET=${1:-540}
PY=${PYTHON:-python3}
RESULTS=${RESULTS:?set RESULTS to the folder the tables go to}
MODEL=${MODEL:-qwen2.5-1.5b}
LENGTHS=${LENGTHS-8192,16384,32768}
PROBE_LENGTHS=${PROBE_LENGTHS:-524288,1048576}
SHORT=${SHORT:-1024}
WHEELS=${WHEELS:-gpuwheels}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)  # absolute: a probe spanning calls runs from a copy of the code
left() { echo $(( BUDGET - ($(date +%s) - began) )); }
BENCH=("$PY" experiments/efficiency/bench.py --models "$MODEL" --algos dpo --methods solopo --short "$SHORT"
       --no-logp-memory --tag _kernels --resume --out "$RESULTS")
PROBE=(--variants savers --lengths "" --max-lengths "$PROBE_LENGTHS" --max-length-models "$MODEL")

bench() {  # bench ARGS...: bench.py within the time left, into RESULTS; a cell cut short is measured next time
  if [ "$(left)" -le 0 ]; then echo "no time left for bench.py $*: the next call runs it"; return 0; fi
  timeout --signal=INT --kill-after=30 "$(left)" "${BENCH[@]}" "$@" 2>&1 | tee -a "$RESULTS/kernels.log"
}

if [ -n "${SPAN_S:-}" ]; then
  source experiments/studies/gpu_call.sh
  STUDY=${SPAN_DIR:-/tmp/solopo_kernels_span}
  mkdir -p "$STUDY" && STUDY=$(cd "$STUDY" && pwd)
fi
probe_running() { [ -n "${SPAN_S:-}" ] && gpu_call_launcher_alive; }

span_probe() {  # the probe to the span's end, on after this call; its log joins kernels.log once it has ended
  gpu_call_launch timeout --signal=INT --kill-after=30 "$(gpu_call_deadline)" "${BENCH[@]}" "${PROBE[@]}"
  if ! gpu_call_launcher_alive; then
    cat "$STUDY/launch.log" >> "$RESULTS/kernels.log" && rm -f "$STUDY/launch.log" "$STUDY/launch.shown"
  fi
}

grid() { bench --variants "$1" --lengths "$LENGTHS" --max-length-models none --warmup "${2:-1}" --steps 2; }

liger_runs() {  # liger-kernel importable (installed from WHEELS if need be) on a CUDA GPU
  if ! "$PY" -c "import liger_kernel" 2>/dev/null && ls "$WHEELS"/liger_kernel-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/solopo-wheels "$WHEELS"/liger_kernel-*.whl \
      && export PYTHONPATH=$PYTHONPATH:/tmp/solopo-wheels
  fi
  "$PY" -c "import sys, torch; from solopo.models.kernels import liger_problems
problems = liger_problems(torch.cuda.is_available()); print(*problems); sys.exit(bool(problems))"
}

if probe_running; then
  echo "the longest-context probe started by an earlier call is running: no grid cell beside it"
elif [ -z "$LENGTHS" ]; then
  echo "LENGTHS is empty: no grid cell, only the probe"
else
  grid padded,cudnn-sdpa
  grid savers
  if liger_runs; then grid liger; else echo "liger: skipped"; fi
  grid compile 2  # a second warm-up step: each new shape may compile again
fi
if [ -n "${SPAN_S:-}" ]; then span_probe; else bench "${PROBE[@]}"; fi
echo "call took $(( $(date +%s) - began )) s"
