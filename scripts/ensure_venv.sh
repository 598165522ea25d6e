#!/usr/bin/env bash
# Create or reuse the project venv (.venv, or $TNF_VENV) at one of two levels, printing each
# stage with its elapsed time:
#   ensure_venv.sh runtime   what `make demo` needs: torch + numpy and tensornet_fast editable,
#                            without compiling the C++ kernels (plain-PyTorch paths; ~5 min of
#                            compiling on 2 cores is what made the old demo slow)
#   ensure_venv.sh test      (default) what `make test` needs: the compiled kernels and the
#                            `test` extras (torchmd-net, triton, rdkit, dask, ...); upgrades a
#                            runtime venv in place
# Each level is reinstalled only when pyproject.toml, setup.py or csrc/ change (a stamp file per
# level); a test-level venv also satisfies `runtime`.
# torch: an importable torch in the venv is kept (bring your CUDA build); otherwise
# torch==2.13.0 is installed first, so the "torch>=..." range never pulls a different (multi-GB
# CUDA) build.
# setuptools_scm (test level): torchmd-net 3.1.0 is an sdist versioned by it; without it (no
# build isolation) its metadata says 0.0.0 and pip rejects the ==3.1.0 pin. ninja: setup.py
# builds the extension with it (parallel compiles); --no-build-isolation installs no build
# requirements.
set -euo pipefail
level=${1:-test}
case "$level" in runtime|test) ;; *) echo "usage: $0 [runtime|test]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${TNF_VENV:-$root/.venv}
python=${PYTHON:-python3}
want=$(find "$root/pyproject.toml" "$root/setup.py" "$root/csrc" -type f 2>/dev/null | LC_ALL=C sort |
  xargs cat | sha256sum | cut -c1-16)
test_stamp="$venv/.tensornet-fast-installed"
runtime_stamp="$venv/.tensornet-fast-runtime"
if [ "$(cat "$test_stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi
if [ "$level" = runtime ] && [ "$(cat "$runtime_stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi

start=$SECONDS
say() { printf '[venv %3ds] %s\n' "$((SECONDS - start))" "$*"; }
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  say "installing torch==${TNF_TORCH_VERSION:-2.13.0} (CPU build, ~0.9 GB unpacked; the longest step)"
  # --no-compile: byte-compiling all of torch's modules at install time costs more than
  # compiling the few a run imports, on first use
  "${pip[@]}" install --no-compile "torch==${TNF_TORCH_VERSION:-2.13.0}"
fi
say "installing build tools (setuptools, wheel)"
"${pip[@]}" install --no-compile "setuptools>=68" wheel
if [ "$level" = runtime ]; then
  say "installing tensornet_fast (editable, numpy; compiled kernels left for \`make test\`)"
  TENSORNET_FAST_NO_EXT=1 "${pip[@]}" install --no-compile --no-build-isolation -e "$root"
  echo "$want" > "$runtime_stamp"
else
  say "installing setuptools_scm, pybind11, ninja (torchmd-net's and our build need them)"
  "${pip[@]}" install setuptools_scm pybind11 ninja
  say "installing tensornet_fast with the test extras and compiling its C++ kernels (minutes)"
  "${pip[@]}" install --no-build-isolation -e "$root[test]"
  # matgl 2.0.4, the oracle of version-1 matgl folders (tests/matgl_oracle.py): it pins
  # torch <= 2.7 but runs on this torch from its unpacked wheel, in a subprocess of its own.
  old="$venv/oracles/matgl-2.0.4"
  if [ ! -d "$old/matgl" ]; then
    say "unpacking the matgl 2.0.4 wheel (test oracle of version-1 matgl folders)"
    tmp=$(mktemp -d)
    "${pip[@]}" download --no-deps -d "$tmp" matgl==2.0.4
    "$venv/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$tmp"/matgl-2.0.4-*.whl "$old"
    rm -rf "$tmp"
  fi
  echo "$want" > "$test_stamp"
fi
say "venv ready ($level)"
