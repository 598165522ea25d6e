#!/usr/bin/env bash
# The GPU first-contact check (bench/gpu_check.py, docs/gpu.md): on a bare H200 from a checkout,
# at most 8 minutes; results (summary.txt, checks.csv, timings.csv, log.txt, build.log) go to
# $OUT when set (the device tool returns that folder), else bench/results/gpu-check-<time>.
#   bash bench/gpu_check.sh [--dry-run] [--out DIR] [--deadline SECONDS]
# Installs nothing: the python3 that has torch and triton ($PYTHON to choose another).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
# kernels/ is the package tensornet_fast.kernels (setup.py's package_dir). An installed or
# editable package maps it; a plain checkout (what the device receives: the developers' symlink
# is git-ignored) gets the same mapping from a symlink, made here if missing.
if [ ! -e tensornet_fast/kernels ]; then
  ln -s ../kernels tensornet_fast/kernels && echo "gpu_check.sh: linked tensornet_fast/kernels -> ../kernels"
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m bench.gpu_check "$@"
