#!/usr/bin/env bash
# The GPU benchmark suite (docs/speed.md, "GPU benchmark suite"): the full-size train step and
# the samplers in bfloat16, within 8 minutes, into one JSON report.
#
#   launch/gpu_bench.sh [CONFIG [OUT]] [--dry_run] [--config.FIELD=VALUE ...]
#   launch/gpu_bench.sh configs/msa_msd.py /tmp/gpu_bench.json
#   launch/gpu_bench.sh configs/msa_msd.py /tmp/dry.json --dry_run     # a tiny model, any CPU
#
# CONFIG defaults to configs/msa_msd.py, OUT to gpu_bench.json. As in launch/local.sh,
# relative CONFIG and OUT paths are taken from the repository root (the script runs there).
# Exit status: the suite's; 124 if it ran past TIMEOUT (the suite's own budget normally ends
# it well before).
#
# Variables (environment; each kept when already set):
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.95  the share of the GPU's memory jax preallocates (75%
#                                        by default: the largest batch that fits would shrink).
#   XLA_FLAGS                            --xla_gpu_enable_latency_hiding_scheduler=true is
#                                        added to what is set.
#   TF_CPP_MIN_LOG_LEVEL=1               fewer C++ info lines.
#   TIMEOUT=480                          seconds before the suite is stopped.
#   PYTHON=python                        the interpreter that has gmscavp_jax installed.
set -euo pipefail

config=configs/msa_msd.py
out=gpu_bench.json
if [[ $# -gt 0 && $1 != --* ]]; then config=$1; shift; fi
if [[ $# -gt 0 && $1 != --* ]]; then out=$1; shift; fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $out = /* ]] || out=$root/$out

export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

cd "$root"
status=0
timeout "${TIMEOUT:-480}" "${PYTHON:-python}" -m gmscavp_jax.bench --suite=gpu \
  --config="$config" --out="$out" "$@" || status=$?
if [[ $status -eq 0 ]]; then
  echo "gpu_bench: report written to $out"
else
  echo "gpu_bench: the suite failed (exit status $status); $out, if there, holds what it" \
    "measured before (\"complete\": false)" >&2
fi
exit "$status"
