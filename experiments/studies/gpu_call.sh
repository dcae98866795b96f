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
  STUDY=$(cd "$STUDY" && pwd)  # absolute: a launcher spanning calls runs elsewhere (gpu_call_snapshot)
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

# The launcher's --deadline: what is left of BUDGET, or with SPAN_S of the span (gpu_call_span_end), less 60 s.
gpu_call_deadline() {
  if [ -n "${SPAN_S:-}" ]; then
    echo $(( $(gpu_call_span_end) - $(date +%s) - 60 ))
  else
    gpu_call_seconds_left
  fi
}

# When the span ends (seconds since the epoch): SPAN_S after the call that started it, kept in $STUDY/span.end (never
# archived, so a fresh machine starts its own) for the later calls while it has not passed, so that a launcher
# started again by a later call (the first one ended early) still ends with the span; once passed, a new span begins.
gpu_call_span_end() {
  local file=$STUDY/span.end now
  now=$(date +%s)
  if ! [ -s "$file" ] || [ "$(cat "$file")" -le "$now" ]; then
    echo $(( began + SPAN_S )) > "$file"
  fi
  cat "$file"
}

# A process's state and start time ("S 123456"; fields 3 and 22 of /proc/PID/stat, read after its name), or nothing.
gpu_call_process() {
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1,20
}

# Whether the launcher that gpu_call_launch started is running: $STUDY/launcher.pid names its wrapper (pid and start
# time), which writes the launcher's exit status to launcher.rc when it ends. A stale file (the pid reused since, or
# a wrapper left defunct because nothing reaps it) does not count: no status yet, and that very process alive.
gpu_call_launcher_alive() {
  local pid start state now_start
  read -r pid start 2>/dev/null < "$STUDY/launcher.pid" || return 1  # stderr first: no file, no message
  [ -n "$pid" ] && ! [ -e "$STUDY/launcher.rc" ] || return 1
  read -r state now_start <<< "$(gpu_call_process "$pid")"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$now_start" = "$start" ]
}

# The code a launcher spanning calls runs, made when it starts: the tree's solopo/ and experiments/ (less the collected
# runs) copied to ${STUDY}.code. The machine copies the working tree afresh at the start of each call, and a job that
# started meanwhile failed to import a module of the package; the launcher and its jobs (the runner's ROOT is its own
# folder) run the copy, which no call touches. Prints its folder.
gpu_call_snapshot() {
  local code=${STUDY%/}.code
  rm -rf "$code" && mkdir -p "$code" || return 1
  tar -cf - --exclude='experiments/*/runs' solopo experiments | tar -xf - -C "$code" || return 1
  echo "$code"
}

# Runs the launcher, "$@", its output into $STUDY/launch.log and here. Without SPAN_S, in this call. With SPAN_S, in a
# process session of its own, which the machine keeps running after the call returns, on a copy of the code
# (gpu_call_snapshot): jobs are not stopped at each call's end and started afresh in the next, and the GPU does not
# idle through the end of each call, where no job that would outlast the call may start. A call that finds the launcher running starts none (its command is not
# used) and waits for it, at most what is left of its own BUDGET, showing what the launcher has written since the
# last call; its archive holds the jobs that have ended. Returns the launcher's status once it has ended, else 0.
gpu_call_launch() {
  if [ -z "${SPAN_S:-}" ]; then
    "$@" 2>&1 | tee -a "$STUDY/launch.log"
    return
  fi
  local log=$STUDY/launch.log shown_file=$STUDY/launch.shown shown
  touch "$log"
  if gpu_call_launcher_alive; then
    echo "the launcher started by an earlier call (pid $(cut -d' ' -f1 "$STUDY/launcher.pid")) is running:" \
      "waiting for it"
  else
    local pid code path
    rm -f "$STUDY/launcher.pid" "$STUDY/launcher.rc"
    code=$(gpu_call_snapshot) || { echo "could not copy the code for the launcher"; return 1; }
    # the wrapper writes its pid (here completed with its start time), runs the launcher in the copy of the code,
    # then writes its status: the launcher's end is known even where nothing reaps the wrapper
    path=$code${PYTHONPATH#"$PWD"}  # the tree's place in it taken by the copy
    (cd "$code" && PYTHONPATH=$path exec setsid sh -c \
      'echo $$ > "$0.tmp" && mv "$0.tmp" "$0.pid"; "$@"; echo $? > "$0.tmp" && mv "$0.tmp" "$0.rc"' \
      "$STUDY/launcher" "$@") >> "$log" 2>&1 < /dev/null &
    while ! [ -s "$STUDY/launcher.pid" ]; do sleep 0.2; done
    pid=$(cat "$STUDY/launcher.pid")
    echo "$pid $(gpu_call_process "$pid" | cut -d' ' -f2)" > "$STUDY/launcher.pid"
  fi
  shown=$(cat "$shown_file" 2>/dev/null || echo 0)
  while :; do
    tail -n +$(( shown + 1 )) "$log"
    shown=$(wc -l < "$log")
    echo "$shown" > "$shown_file"
    gpu_call_launcher_alive && [ "$(gpu_call_seconds_left)" -gt 0 ] || break
    sleep 2
  done
  if gpu_call_launcher_alive; then
    echo "the launcher runs on after this call (the next call waits for it)"
    return 0
  fi
  return "$(cat "$STUDY/launcher.rc" 2>/dev/null || echo 0)"
}

# Everything small (results.json, job records, logs, metrics.csv, the report, the caches of pairs, evaluations and
# reference log-probs; no checkpoints) in ONE archive, $OUT/$NAME.tar.gz; after RESTORE_RUNS, only what is newer.
gpu_call_archive() {
  local newer=()
  [ -e "$STUDY/.restored" ] && newer=(--newer-mtime="$STUDY/.restored")
  tar -czf "$OUT/$NAME.tar.gz" --ignore-failed-read --exclude='*.ckpt' --exclude='.partial' --exclude='*.lock' \
    --exclude='eval_*.png' --exclude=launcher.pid --exclude=launcher.rc --exclude=span.end --exclude=launch.shown \
    "${newer[@]}" \
    -C / "${STUDY#/}" "${SOLOPO_CACHE#/}/pairs" "${SOLOPO_CACHE#/}/eval" "${SOLOPO_CACHE#/}/reference"
  ls -la "$OUT"
  echo "call took $(( $(date +%s) - began )) s"
}
