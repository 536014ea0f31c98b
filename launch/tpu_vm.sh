#!/usr/bin/env bash
# Trains on a Cloud TPU VM (one host or a pod slice of many) with gcloud.
#
#   launch/tpu_vm.sh create|setup|stop|delete
#   launch/tpu_vm.sh train|all CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   launch/tpu_vm.sh logs [WORKDIR]
#
#   export TPU_NAME=gmscavp ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
#   launch/tpu_vm.sh all configs/msa_msd.py /mnt/shared/msa_msd --config.train.batch_size=256
#
# Sub-commands:
#   create   gcloud compute tpus tpu-vm create (ACCELERATOR_TYPE, RUNTIME_VERSION, SPOT, ...).
#   setup    Puts the package on every worker (a copy of this working tree, or a clone of
#            REPO_URL) in ~/REMOTE_DIR, and installs it with `pip install -e .` and JAX_SPEC
#            into a Python >= 3.11 virtualenv ~/VENV (made with uv, which `pip install --user`
#            fetches; uv downloads a Python when the image has none that new). Rerun it after
#            changing the code.
#   train    Runs the same command on every worker:
#              python -m gmscavp_jax.main --config=CONFIG --workdir=WORKDIR [overrides]
#            (the program joins the workers with jax.distributed.initialize() itself). It runs
#            detached from the ssh session, logging to ~/REMOTE_DIR/logs/train.<worker>.log;
#            this command follows worker 0's log and returns the run's exit status, unless
#            DETACH=1 (return at once). Ctrl-C stops following, not the training.
#            Relative CONFIG and WORKDIR paths are taken from ~/REMOTE_DIR on the workers.
#   stop     SIGTERM to the training on every worker: it saves a checkpoint and exits 143;
#            `train` with the same arguments continues it. Waits until it has exited.
#   logs     Copies every worker's logs into LOCAL_DIR/worker<i>/ and, given WORKDIR, its
#            small files (config.json, metrics.jsonl, results.*, plots/) into
#            LOCAL_DIR/workdir/: from worker 0, or with `gcloud storage` for a gs:// WORKDIR.
#   delete   gcloud compute tpus tpu-vm delete.
#   all      create, setup, train (waits), logs, delete (KEEP_VM=1: no delete). Its exit
#            status is train's.
#
# The workdir must be the same directory for every worker: on a pod slice (several workers)
# a local path is a different disk on each, so use a shared filesystem mounted at the same
# path on every worker (NFS / Filestore, or a bucket through Cloud Storage FUSE). A local
# path works on a single-host TPU VM (v4-8, v5litepod-8, ...) but goes away with `delete`.
#
# Variables (environment):
#   TPU_NAME                (required) Name of the TPU VM.
#   ZONE                    (required) e.g. us-central2-b (v4), us-west4-a (v5e).
#   PROJECT=                Google Cloud project; empty: gcloud's configured project.
#   ACCELERATOR_TYPE=v4-8   e.g. v4-32 (4 workers), v5litepod-16, v5p-8, v6e-8.
#   RUNTIME_VERSION=tpu-ubuntu2204-base   TPU software version; v5e: v2-alpha-tpuv5-lite,
#                           v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e.
#   SPOT=0                  1: create a Spot TPU VM (--spot).
#   PREEMPTIBLE=0           1: create a preemptible TPU VM (--preemptible).
#   CREATE_FLAGS=           More flags for `create`, e.g. "--network=NET --subnetwork=SUB".
#   SSH_FLAGS=              More flags for every ssh/scp, e.g. "--internal-ip" or
#                           "--tunnel-through-iap".
#   REPO_URL=               Empty: `setup` copies this working tree (tracked files and
#                           untracked ones git does not ignore). Else: git clone on each
#                           worker (it needs read access to the repository).
#   REPO_REF=               With REPO_URL: branch, tag or commit (default: the remote's HEAD).
#   REMOTE_DIR=gmscavp_jax  Package directory on the workers, relative to the home directory.
#   VENV=gmscavp_venv       Virtualenv on the workers, relative to the home directory.
#   PYTHON_VERSION=3.11     Python of that virtualenv.
#   JAX_SPEC=jax[tpu]       Installed beside the package (JAX with libtpu).
#   DETACH=0                1: `train` returns once the run has started.
#   LOCAL_DIR=tpu_logs/$TPU_NAME   Where `logs` puts what it copies (here, not on the VM).
#   KEEP_VM=0               1: `all` does not delete the VM.
#   DRY_RUN=0               1: print the gcloud commands instead of running them.
#
# Preemption: a Spot/preemptible VM that is preempted is stopped (the program gets a SIGTERM
# first and saves a checkpoint when there is time). With a shared WORKDIR, `delete`, then
# `create`, `setup` and `train` with the same arguments resume the run where it stopped.
set -euo pipefail

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

sub=${1:-}
[[ -n $sub ]] || usage
shift
config='' workdir=''
case $sub in
  create|setup|stop|delete) (( $# == 0 )) || usage ;;
  train|all) (( $# >= 2 )) || usage; config=$1; workdir=$2; shift 2 ;;
  logs) (( $# <= 1 )) || usage; workdir=${1:-} ;;
  *) usage ;;
esac

: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
project=${PROJECT:-}
accelerator_type=${ACCELERATOR_TYPE:-v4-8}
runtime_version=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
repo_url=${REPO_URL:-}
repo_ref=${REPO_REF:-}
remote_dir=${REMOTE_DIR:-gmscavp_jax}
venv=${VENV:-gmscavp_venv}
python_version=${PYTHON_VERSION:-3.11}
jax_spec=${JAX_SPEC:-jax[tpu]}
local_dir=${LOCAL_DIR:-tpu_logs/$TPU_NAME}
read -ra create_flags <<< "${CREATE_FLAGS:-}"
read -ra ssh_flags <<< "${SSH_FLAGS:-}"

repo_root=$(cd "$(dirname "$0")/.." && pwd)
common=(--zone="$ZONE")
if [[ -n $project ]]; then common+=(--project="$project"); fi

run() {  # Runs (or with DRY_RUN=1 prints) a command.
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# on_workers WORKER SCRIPT [NAME=VALUE ...]: runs the bash SCRIPT on worker WORKER ("all" or
# an index), with each NAME set to VALUE (quoted here, so any value is safe).
on_workers() {
  local worker=$1 script=$2 prefix='' kv
  shift 2
  for kv in "$@"; do
    prefix+="${kv%%=*}=$(printf '%q' "${kv#*=}")"$'\n'
  done
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --worker="$worker" \
      ${ssh_flags[@]+"${ssh_flags[@]}"} \
      --command="bash -c $(printf '%q' "set -euo pipefail"$'\n'"$prefix$REMOTE_PRELUDE"$'\n'"$script")"
}

# shellcheck disable=SC2016  # $ in the remote scripts expands on the workers.
# Run first on the workers: paths, the worker's index, and the TPU_WORKER_* variables from
# the VM's metadata. jax.distributed.initialize() finds the pod slice's workers in that
# metadata by itself; the variables let the program see a multi-worker slice before it
# calls it (on GKE they are set already, and are left alone).
REMOTE_PRELUDE='
cd "$HOME"
case $VENV in /*) ;; *) VENV=$HOME/$VENV ;; esac
metadata() {
  curl -sf -H "Metadata-Flavor: Google" \
      "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}
if worker=$(metadata agent-worker-number); then
  if [ -z "${TPU_WORKER_HOSTNAMES:-}" ] && endpoints=$(metadata worker-network-endpoints); then
    hosts=""
    for e in ${endpoints//,/ }; do hosts="${hosts:+$hosts,}${e##*:}"; done
    case $hosts in
      *,*) export TPU_WORKER_ID=$worker TPU_WORKER_HOSTNAMES=$hosts ;;
    esac
  fi
else
  worker=$(hostname)
fi'

# shellcheck disable=SC2016
SETUP_SCRIPT='
if [ -n "$REPO_URL" ]; then
  [ -d "$REMOTE_DIR/.git" ] || git clone --quiet "$REPO_URL" "$REMOTE_DIR"
  git -C "$REMOTE_DIR" fetch --quiet origin "${REPO_REF:-HEAD}"
  git -C "$REMOTE_DIR" checkout --quiet --force FETCH_HEAD
else
  mkdir -p "$REMOTE_DIR"
  tar -xzf gmscavp_src.tgz -C "$REMOTE_DIR"
  rm -f gmscavp_src.tgz
fi
uv=$HOME/.local/bin/uv
if [ ! -x "$uv" ]; then
  python3 -m pip install --quiet --user uv ||
      python3 -m pip install --quiet --user --break-system-packages uv
fi
[ -x "$VENV/bin/python" ] || "$uv" venv --quiet --python "$PYTHON_VERSION" "$VENV"
"$uv" pip install --quiet --python "$VENV/bin/python" -e "$REMOTE_DIR" "$JAX_SPEC"
echo "worker $worker: $("$VENV/bin/python" -c "import jax, gmscavp_jax; print(\"jax\", jax.__version__)")"'

# shellcheck disable=SC2016
TRAIN_SCRIPT='
cd "$REMOTE_DIR"
mkdir -p logs
if [ -s logs/train.pid ] && kill -0 "$(cat logs/train.pid)" 2>/dev/null; then
  echo "worker $worker: a training is running already (pid $(cat logs/train.pid));" \
       "launch/tpu_vm.sh stop ends it" >&2
  exit 1
fi
case $WORKDIR in *://*) ;; *) mkdir -p "$WORKDIR" ;; esac
eval "set -- $ARGS"
log=logs/train.$worker.log
rm -f logs/train.pid logs/train.status
# In a session of its own, so the run outlives this ssh connection.
setsid nohup bash -c "$RECORDER" "$log" \
    "$VENV/bin/python" -m gmscavp_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
    > /dev/null 2>&1 < /dev/null &
for _ in $(seq 100); do [ -s logs/train.pid ] && break; sleep 0.1; done
pid=$(cat logs/train.pid)
echo "worker $worker: training (pid $pid), log ~/$REMOTE_DIR/$log"
[ "$DETACH" = 1 ] && exit 0
if [ "$worker" = 0 ]; then
  tail -n +1 -f --pid="$pid" "$log"
else
  while kill -0 "$pid" 2>/dev/null; do sleep 10; done
fi
for _ in $(seq 30); do [ -s logs/train.status ] && break; sleep 1; done
status=$(cat logs/train.status 2>/dev/null || echo 1)
[ "$status" = 0 ] || echo "worker $worker: exit status $status" >&2
exit "$status"'

# shellcheck disable=SC2016
# Runs "$@" with its output appended to the file $0, records the program's pid (for stop) in
# logs/train.pid and, when it ends, its exit status in logs/train.status.
RECORDER='"$@" >> "$0" 2>&1 < /dev/null &
echo $! > logs/train.pid
wait $! && status=0 || status=$?
echo "$status" > logs/train.status'

# shellcheck disable=SC2016
STOP_SCRIPT='
cd "$REMOTE_DIR"
if [ -s logs/train.pid ] && pid=$(cat logs/train.pid) && kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  echo "worker $worker: SIGTERM to pid $pid; waiting for it to save and exit"
  while kill -0 "$pid" 2>/dev/null; do sleep 2; done
  sleep 1
  echo "worker $worker: exit status $(cat logs/train.status 2>/dev/null || echo unknown)"
else
  echo "worker $worker: no training running"
fi'

# shellcheck disable=SC2016
PACK_SCRIPT='
rm -f gmscavp_logs.tgz gmscavp_workdir.tgz
tar -czf gmscavp_logs.tgz -C "$REMOTE_DIR" logs
if [ "$worker" = 0 ] && [ -n "$WORKDIR" ]; then
  cd "$REMOTE_DIR"
  case $WORKDIR in
    *://*) ;;
    *) files=()
       for f in config.json metrics.jsonl results.json results.md plots; do
         if [ -e "$WORKDIR/$f" ]; then files+=("$f"); fi
       done
       if [ ${#files[@]} -gt 0 ]; then
         tar -czf "$HOME/gmscavp_workdir.tgz" -C "$WORKDIR" "${files[@]}"
       fi ;;
  esac
fi'

num_workers() {  # Workers of the TPU VM, from its network endpoints.
  local endpoints
  local -a ips=()
  endpoints=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${common[@]}" \
      --format='value(networkEndpoints[].ipAddress)') || endpoints=''
  read -ra ips <<< "${endpoints//[;,]/ }"
  echo "$(( ${#ips[@]} > 0 ? ${#ips[@]} : 1 ))"
}

do_create() {
  local flags=(--accelerator-type="$accelerator_type" --version="$runtime_version")
  if [[ ${SPOT:-0} == 1 ]]; then flags+=(--spot); fi
  if [[ ${PREEMPTIBLE:-0} == 1 ]]; then flags+=(--preemptible); fi
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${common[@]}" "${flags[@]}" \
      ${create_flags[@]+"${create_flags[@]}"}
}

do_setup() {
  if [[ -z $repo_url ]]; then
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $tmp now
    trap "rm -rf '$tmp'" EXIT
    if git -C "$repo_root" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
      (cd "$repo_root" &&
       git ls-files -z --cached --others --exclude-standard |
         while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
         tar --null -T - -czf "$tmp/src.tgz")
    else
      tar -C "$repo_root" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ \
          -czf "$tmp/src.tgz" .
    fi
    run gcloud compute tpus tpu-vm scp "$tmp/src.tgz" "$TPU_NAME:gmscavp_src.tgz" \
        "${common[@]}" --worker=all ${ssh_flags[@]+"${ssh_flags[@]}"}
  fi
  on_workers all "$SETUP_SCRIPT" REPO_URL="$repo_url" REPO_REF="$repo_ref" \
      REMOTE_DIR="$remote_dir" VENV="$venv" PYTHON_VERSION="$python_version" \
      JAX_SPEC="$jax_spec"
}

do_train() {  # do_train DETACH
  local status=0 args=''
  if (( ${#extra_args[@]} > 0 )); then args=$(printf '%q ' "${extra_args[@]}"); fi
  on_workers all "$TRAIN_SCRIPT" REMOTE_DIR="$remote_dir" VENV="$venv" CONFIG="$config" \
      WORKDIR="$workdir" ARGS="$args" DETACH="$1" RECORDER="$RECORDER" || status=$?
  if (( status != 0 )); then
    echo "launch/tpu_vm.sh: train ended with status $status; each worker's exit status is" \
         "above (143: stopped with a checkpoint saved; train again to continue)." >&2
  fi
  return "$status"
}

do_logs() {
  local n i
  on_workers all "$PACK_SCRIPT" REMOTE_DIR="$remote_dir" VENV="$venv" WORKDIR="$workdir"
  if [[ ${DRY_RUN:-0} == 1 ]]; then n=1; else n=$(num_workers); fi
  run mkdir -p "$local_dir"
  for (( i = 0; i < n; i++ )); do
    run mkdir -p "$local_dir/worker$i"
    run gcloud compute tpus tpu-vm scp "$TPU_NAME:gmscavp_logs.tgz" "$local_dir/worker$i.tgz" \
        "${common[@]}" --worker="$i" ${ssh_flags[@]+"${ssh_flags[@]}"}
    run tar -xzf "$local_dir/worker$i.tgz" -C "$local_dir/worker$i"
    run rm -f "$local_dir/worker$i.tgz"
  done
  [[ -n $workdir ]] || return 0
  run mkdir -p "$local_dir/workdir"
  if [[ $workdir == gs://* ]]; then
    local f
    for f in config.json metrics.jsonl results.json results.md; do
      run gcloud storage cp "$workdir/$f" "$local_dir/workdir/" || true
    done
    run gcloud storage cp --recursive "$workdir/plots" "$local_dir/workdir/" || true
  else
    run gcloud compute tpus tpu-vm scp "$TPU_NAME:gmscavp_workdir.tgz" \
        "$local_dir/workdir.tgz" "${common[@]}" --worker=0 \
        ${ssh_flags[@]+"${ssh_flags[@]}"} || { echo "no workdir files on worker 0" >&2; return 0; }
    run tar -xzf "$local_dir/workdir.tgz" -C "$local_dir/workdir"
    run rm -f "$local_dir/workdir.tgz"
  fi
  echo "launch/tpu_vm.sh: copied into $local_dir" >&2
}

do_delete() {
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${common[@]}" --quiet
}

extra_args=("$@")
case $sub in
  create) do_create ;;
  setup) do_setup ;;
  train) do_train "${DETACH:-0}" ;;
  stop) on_workers all "$STOP_SCRIPT" REMOTE_DIR="$remote_dir" VENV="$venv" ;;
  logs) do_logs ;;
  delete) do_delete ;;
  all)
    do_create
    status=0
    { do_setup && do_train 0; } || status=$?
    do_logs || true
    if [[ ${KEEP_VM:-0} == 1 ]]; then
      echo "launch/tpu_vm.sh: KEEP_VM=1, so $TPU_NAME is still running" >&2
    else
      do_delete
    fi
    exit "$status" ;;
esac
