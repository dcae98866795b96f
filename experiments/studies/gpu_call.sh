# The set-up and the archive of one GPU call of a study, sourced by the study's run.sh (paper_mini, decisive), which
# runs its own steps between the two:
#
#   source experiments/studies/gpu_call.sh
#   gpu_call_begin NAME DEFAULT_BUDGET_S "${1:-}"   # then `shift || true`: the rest are the launcher's options
#   gpu_call_launch $PY launch.py ... --deadline "$(gpu_call_deadline)" "$@"
#   gpu_call_launcher_alive || ... the report ...
#   gpu_call_archive                                # $OUT/NAME.tar.gz
#
# Environment: STUDY (/tmp/NAME), the study's directory; OUT (/tmp/NAME_out), where the archive goes; PYTHON (python3);
# PYTHONPATH with hydra-core, omegaconf, antlr4 and gguf where they are not installed;
# SOLOPO_SMOLLM2_WHEEL (the GGUF or its wheel) on a machine whose model cache is cold; SOLOPO_CACHE
# (/tmp/solopo-cache); RESTORE="a.tar.gz b.tar.gz": on a fresh machine, unpack earlier calls' archives first, in that
# order (their results and the sampling, reference and evaluation caches), so that only the rest runs; an archive
# holds what its machine had, so name every machine's last one. RESTORE_RUNS=DIR: on a fresh machine, put back the
# runs and cache entries collected into the repository (experiments/studies/collect.py), which travel with it; the
# archive then holds only what this machine adds (files newer than $STUDY/.restored).

# $1: the study's name; $3: the seconds this call may take (BUDGET), $2 where it is empty.
# Sets PY, STUDY, OUT, SOLOPO_CACHE and PYTHONPATH; unpacks RESTORE's archives; makes the model's weights; gpu.txt.
gpu_call_begin() {
  began=$(date +%s)
  NAME=$1
  BUDGET=${3:-$2}
  STUDY=${STUDY:-/tmp/$NAME}
  OUT=${OUT:-/tmp/${NAME}_out}
  PY=${PYTHON:-python3}
  export SOLOPO_CACHE=${SOLOPO_CACHE:-/tmp/solopo-cache}
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  mkdir -p "$STUDY" "$SOLOPO_CACHE" "$OUT"
  fresh=$([ -e "$STUDY/jobs.json" ] || echo 1)  # decided once: RESTORE's archives bring a jobs.json of their own
  if [ -n "${RESTORE:-}" ] && [ -n "$fresh" ]; then
    for archive in $RESTORE; do
      tar -xzf "$archive" -C / && echo "restored $archive" || exit 1
    done
  fi
  if [ -n "${RESTORE_RUNS:-}" ] && [ -d "$RESTORE_RUNS" ] && [ -n "$fresh" ]; then
    $PY experiments/studies/collect.py --restore "$RESTORE_RUNS" --study "$STUDY" --cache "$SOLOPO_CACHE" || exit 1
  fi
  # Dequantise the GGUF once, before the jobs start: concurrent first runs would each build the model cache.
  $PY -c "from solopo.models.embedded import SMOLLM2_135M, ensure_weights; print(ensure_weights(SMOLLM2_135M))" || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$STUDY/gpu.txt" 2>&1
}

# What the launcher may take of BUDGET: what is left, less 60 s for stopping jobs, the report and the archive.
gpu_call_seconds_left() {
  echo $(( BUDGET - ($(date +%s) - began) - 60 ))
}

# The launcher's --deadline: what is left of BUDGET, or with SPAN_S of the span, less 60 s.
gpu_call_deadline() {
  echo $(( ${SPAN_S:-$BUDGET} - ($(date +%s) - began) - 60 ))
}

gpu_call_launcher_alive() {
  [ -s "$STUDY/launcher.pid" ] && kill -0 "$(cat "$STUDY/launcher.pid")" 2>/dev/null
}

# Runs the launcher, "$@", its output into $STUDY/launch.log and here. Without SPAN_S, in this call. With SPAN_S, in a
# process session of its own, which the machine keeps running after the call returns: jobs are not stopped at each
# call's end and started afresh in the next, and the GPU does not idle through the end of each call, where no job
# that would outlast the call may start. A call that finds the launcher running starts none (its command is not
# used) and waits for it, at most what is left of its own BUDGET; its archive holds the jobs that have ended.
gpu_call_launch() {
  if [ -z "${SPAN_S:-}" ]; then
    "$@" 2>&1 | tee -a "$STUDY/launch.log"
    return
  fi
  local log=$STUDY/launch.log shown
  touch "$log"
  shown=$(wc -l < "$log")
  if gpu_call_launcher_alive; then
    echo "the launcher started by an earlier call (pid $(cat "$STUDY/launcher.pid")) is running: waiting for it"
  else
    # sh writes its own pid, then becomes the launcher: the pid file names the launcher, not a wrapper
    setsid sh -c 'echo $$ > "$0"; exec "$@"' "$STUDY/launcher.pid" "$@" >> "$log" 2>&1 < /dev/null &
    sleep 1
  fi
  while gpu_call_launcher_alive && [ "$(gpu_call_seconds_left)" -gt 0 ]; do
    sleep 2
    tail -n +$(( shown + 1 )) "$log"
    shown=$(wc -l < "$log")
  done
  tail -n +$(( shown + 1 )) "$log"
  gpu_call_launcher_alive && echo "the launcher runs on after this call (the next call waits for it)"
  return 0
}

# Everything small (results.json, job records, logs, metrics.csv, the report, the caches of pairs, evaluations and
# reference log-probs; no checkpoints) in ONE archive, $OUT/$NAME.tar.gz; after RESTORE_RUNS, only what is newer.
gpu_call_archive() {
  local newer=()
  [ -e "$STUDY/.restored" ] && newer=(--newer-mtime="$STUDY/.restored")
  tar -czf "$OUT/$NAME.tar.gz" --ignore-failed-read --exclude='*.ckpt' --exclude='.partial' --exclude='*.lock' \
    --exclude='eval_*.png' "${newer[@]}" \
    -C / "${STUDY#/}" "${SOLOPO_CACHE#/}/pairs" "${SOLOPO_CACHE#/}/eval" "${SOLOPO_CACHE#/}/reference"
  ls -la "$OUT"
  echo "call took $(( $(date +%s) - began )) s"
}
