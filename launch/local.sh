#!/usr/bin/env bash
# Trains one config on this machine (all local devices), then prints the retrieval results.
#   launch/local.sh configs/msa.py:runlocal /tmp/msa [--config.FIELD=VALUE ...]
# Running it again on the same workdir resumes from the newest checkpoint.
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]}
shift 2
cd "$(dirname "$0")/.."
mkdir -p "$workdir"
python -m gmscavp_jax.main --config="$config" --workdir="$workdir" "$@" 2>&1 | tee -a "$workdir/train.log"
cat "$workdir/results.json"
