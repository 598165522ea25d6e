#!/usr/bin/env bash
# Build run_exported against the libtorch of a Python environment (no CMake needed):
#   examples/cpp/build.sh [PYTHON] [OUTPUT]
# PYTHON defaults to .venv/bin/python (or python3); OUTPUT to examples/cpp/run_exported.
# The binary links libtorch only (no libpython) and finds it through an rpath.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -x "$HERE/../../.venv/bin/python" ]; then PY="$HERE/../../.venv/bin/python"; else PY=python3; fi
fi
OUT="${2:-$HERE/run_exported}"
TORCH="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
ABI="$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
"${CXX:-g++}" -std=c++17 -O1 -D_GLIBCXX_USE_CXX11_ABI="$ABI" "$HERE/run_exported.cpp" -o "$OUT" \
  -I"$TORCH/include" -I"$TORCH/include/torch/csrc/api/include" \
  -L"$TORCH/lib" -Wl,-rpath,"$TORCH/lib" -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 \
  -Wl,--as-needed
echo "$OUT"
