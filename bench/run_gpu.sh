#!/usr/bin/env bash
# One command for a GPU machine without internet access. Installs nothing: it uses the Python
# that already has torch (+ triton) and torchmd-net ($PYTHON, else .venv/bin/python, else python3).
#   bash bench/run_gpu.sh [NAME]        # FULL=1 runs the whole test suite, else -m 'gpu or triton'
# Writes everything (CSV, PNG, ROOFLINE.md, HEADLINE.md, logs, test report) under
# bench/results/NAME (default gpu-<UTC date>-<git sha>) and prints that folder at the end.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PY=$root/.venv/bin/python; else PY=python3; fi
fi
sha=$(git rev-parse --short=10 HEAD 2>/dev/null || echo nogit)
name=${1:-gpu-$(date -u +%Y%m%dT%H%M%SZ)-$sha}
out=$root/bench/results/$name
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}

"$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("run_gpu.sh: CUDA is not available to this torch (%s); nothing was run" % torch.__version__)
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
for mod in ("triton", "torchmdnet", "warp"):
    try:
        m = __import__(mod)
        print(f"{mod}:", getattr(m, "__version__", "?"))
    except Exception as exc:
        print(f"{mod}: NOT importable ({exc})")
PYEOF
mkdir -p "$out"

tests_rc=0
# TNF_GPU_LANE=1: tests/conftest.py asserts CUDA and the Triton tests run on it (not the
# interpreter). Default: the GPU- and Triton-marked tests; FULL=1: the whole suite.
if [ "${FULL:-0}" = 1 ]; then marker=(); else marker=(-m "gpu or triton"); fi
TNF_GPU_LANE=1 "$PY" -m pytest -q "${marker[@]}" --benchmark-disable --junitxml "$out/tests.xml" 2>&1 \
  | tee "$out/tests.log" || tests_rc=${PIPESTATUS[0]}
# pytest exit 5 = no test selected (no gpu-marked tests yet): not a failure
if [ "$tests_rc" = 5 ]; then tests_rc=0; fi

"$PY" -m bench bench/sweeps/gpu.toml --device cuda --out-dir "$out" 2>&1 | tee "$out/sweep.log"
sweep_rc=${PIPESTATUS[0]}

echo "tests exit $tests_rc, sweep exit $sweep_rc"
echo "results: $out"
[ "$tests_rc" = 0 ] && [ "$sweep_rc" = 0 ]
