#!/usr/bin/env bash
# Create or reuse the project venv (.venv, or $TNF_VENV) and install tensornet_fast editable with
# its test extras. Reinstalls only when pyproject.toml, setup.py or csrc/ change.
# torch: an importable torch in the venv is kept (bring your CUDA build); otherwise torch==2.13.0
# is installed first, so the "torch>=..." range never pulls a different (multi-GB CUDA) build.
# setuptools_scm: torchmd-net 3.1.0 is an sdist versioned by it; without it (no build isolation) its
# metadata says 0.0.0 and pip rejects the ==3.1.0 pin.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${TNF_VENV:-$root/.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.tensornet-fast-installed"
want=$(cat "$root/pyproject.toml" "$root/setup.py" "$root"/csrc/* 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  "$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==${TNF_TORCH_VERSION:-2.13.0}"
  "${pip[@]}" install setuptools setuptools_scm wheel pybind11
  "${pip[@]}" install --no-build-isolation -e "$root[test]"
  # matgl 2.0.4, the oracle of version-1 matgl folders (tests/matgl_oracle.py): it pins
  # torch <= 2.7 but runs on this torch from its unpacked wheel, in a subprocess of its own.
  old="$venv/oracles/matgl-2.0.4"
  if [ ! -d "$old/matgl" ]; then
    tmp=$(mktemp -d)
    "${pip[@]}" download --no-deps -d "$tmp" matgl==2.0.4
    "$venv/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$tmp"/matgl-2.0.4-*.whl "$old"
    rm -rf "$tmp"
  fi
  echo "$want" > "$stamp"
fi
