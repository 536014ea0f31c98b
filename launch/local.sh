#!/usr/bin/env bash
# Trains one config on this machine, then prints the retrieval results.
#
#   launch/local.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   launch/local.sh configs/msa.py:runlocal /tmp/msa --config.train.batch_size=16
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local.sh configs/msa.py:runlocal /tmp/msa2
#
# Running it again on the same workdir resumes from the newest checkpoint. Relative CONFIG and
# WORKDIR paths are taken from the repository root (the script runs there).
#
# Variables (environment):
#   NUM_PROCESSES=1         1: one process with every local device (output also on the
#                           terminal, log in WORKDIR/train.log). N > 1: N processes on this
#                           machine joined by jax.distributed through 127.0.0.1:PORT, for
#                           testing multi-process code; process i logs to WORKDIR/train.<i>.log
#                           (process 0 is also shown on the terminal). If one process fails the
#                           others get SIGTERM (SIGKILL 120 s later) and the script fails.
#   PORT=<a free port>      Coordinator port for NUM_PROCESSES > 1.
#   JAX_PLATFORMS           Passed through as set. With NUM_PROCESSES > 1 it defaults to `cpu`
#                           (processes on one machine cannot share its accelerators); set it to
#                           the empty string to let jax choose.
#   DEVICES_PER_PROCESS=    Unset: jax's default. N: adds
#                           --xla_force_host_platform_device_count=N to XLA_FLAGS, i.e. N fake
#                           CPU devices per process.
#   RESTART_ON_PREEMPT=0    1: when the program exits with status 143 (it got SIGTERM, saved a
#                           checkpoint and stopped), start the same command again, which
#                           resumes; at most MAX_RESTARTS times. A SIGTERM or Ctrl-C sent to
#                           this script is passed on to the program (which saves) and never
#                           restarts it.
#   MAX_RESTARTS=10         See RESTART_ON_PREEMPT.
#   PYTHON=python           The interpreter that has gmscavp_jax installed.
#
# Exit status: 0 when every process succeeded; otherwise the status of the first process that
# failed (143: stopped by SIGTERM with a checkpoint saved; run the same command to continue).
set -euo pipefail

usage='usage: [NUM_PROCESSES=N] launch/local.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]'
config=${1:?$usage}
workdir=${2:?$usage}
shift 2

num_processes=${NUM_PROCESSES:-1}
restart_on_preempt=${RESTART_ON_PREEMPT:-0}
max_restarts=${MAX_RESTARTS:-10}
python=${PYTHON:-python}
grace_seconds=120  # SIGTERM to SIGKILL, when stopping the other processes after a failure.

if ! [[ $num_processes =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/local.sh: NUM_PROCESSES must be a positive integer, got '$num_processes'" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
mkdir -p "$workdir"

if [[ -n ${DEVICES_PER_PROCESS:-} ]]; then
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi
if (( num_processes > 1 )); then
  export JAX_PLATFORMS=${JAX_PLATFORMS-cpu}
  port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
fi

pids=()        # pid of each process of the current run, by process index
codes=()       # exit status of each process that has ended, by process index
interrupted=0  # this script got SIGINT/SIGTERM: pass it on, then stop without restarting

stop_all() {  # SIGTERM to every process still running.
  local i
  for (( i = 0; i < ${#pids[@]}; i++ )); do
    if [[ -z ${codes[i]:-} ]]; then kill -TERM "${pids[i]}" 2>/dev/null || true; fi
  done
}

# shellcheck disable=SC2329  # invoked by the trap below
on_signal() {
  interrupted=1
  echo "launch/local.sh: stopping (SIGTERM to the training, which saves a checkpoint)" >&2
  stop_all
}
trap on_signal INT TERM

# Starts process $1 in the background (its pid is appended to `pids`).
start_process() {
  local i=$1
  local cmd=("$python" -m gmscavp_jax.main --config="$config" --workdir="$workdir")
  if (( num_processes > 1 )); then
    cmd+=(--coordinator_address="127.0.0.1:$port" --num_processes="$num_processes"
          --process_id="$i")
  fi
  cmd+=(${extra_args[@]+"${extra_args[@]}"})
  local log="$workdir/train.log"
  if (( num_processes > 1 )); then
    log="$workdir/train.$i.log"
  fi
  if (( i == 0 )); then
    "${cmd[@]}" > >(tee -a "$log") 2>&1 &
  else
    "${cmd[@]}" >> "$log" 2>&1 &
  fi
  pids+=("$!")
}

# Starts every process, waits for all; sets `status` (0, or the first failure's exit status).
run_once() {
  pids=()
  codes=()
  local i
  for (( i = 0; i < num_processes; i++ )); do
    start_process "$i"
  done
  if (( num_processes > 1 )); then
    echo "launch/local.sh: $num_processes processes (pids ${pids[*]}), logs in $workdir/train.<i>.log" >&2
  fi
  local remaining=$num_processes stopping_since=0 code
  while (( remaining > 0 )); do
    for (( i = 0; i < num_processes; i++ )); do
      [[ -n ${codes[i]:-} ]] && continue
      kill -0 "${pids[i]}" 2>/dev/null && continue
      code=0
      wait "${pids[i]}" || code=$?
      codes[i]=$code
      remaining=$(( remaining - 1 ))
      if (( code != 0 && code != 143 && stopping_since == 0 && remaining > 0 )); then
        echo "launch/local.sh: process $i failed (exit status $code); stopping the others" >&2
        stopping_since=$SECONDS
        stop_all
      fi
    done
    (( remaining == 0 )) && break
    if (( interrupted && stopping_since == 0 )); then
      stopping_since=$SECONDS
    fi
    if (( stopping_since > 0 && SECONDS - stopping_since > grace_seconds )); then
      echo "launch/local.sh: still running ${grace_seconds} s after SIGTERM; SIGKILL" >&2
      for (( i = 0; i < num_processes; i++ )); do
        if [[ -z ${codes[i]:-} ]]; then kill -KILL "${pids[i]}" 2>/dev/null || true; fi
      done
    fi
    sleep 1
  done
  status=0
  for code in "${codes[@]}"; do  # A real failure outranks 143 (preempted).
    if (( code != 0 && code != 143 )); then status=$code; return; fi
  done
  for code in "${codes[@]}"; do
    if (( code != 0 )); then status=$code; return; fi
  done
}

extra_args=("$@")
restarts=0
while :; do
  run_once
  if (( status == 143 && !interrupted && restart_on_preempt == 1 && restarts < max_restarts )); then
    restarts=$(( restarts + 1 ))
    echo "launch/local.sh: preempted (exit status 143, checkpoint saved); restart $restarts of $max_restarts" >&2
    continue
  fi
  break
done

if (( status == 143 )); then
  echo "launch/local.sh: stopped with a checkpoint saved; run the same command to continue" >&2
elif (( status != 0 )); then
  echo "launch/local.sh: failed (exit status $status); see $workdir/train*.log" >&2
else
  cat "$workdir/results.json"
fi
exit "$status"
