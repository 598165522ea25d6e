# Quick start: `make demo` (energies and forces of the bundled molecules with the default model;
# installs the runtime only: torch, numpy, tensornet_fast) and `make test` (lint + the whole test
# suite, what CI runs; upgrades the venv to the compiled kernels and the test extras). Both
# create or reuse .venv ($TNF_VENV elsewhere).
VENV := $(or $(TNF_VENV),.venv)
export TNF_VENV := $(VENV)
PY := $(VENV)/bin/python
LINTED := tensornet_fast kernels tests bench

.PHONY: venv venv-runtime demo test test-fast lint
venv:
	@bash scripts/ensure_venv.sh test

venv-runtime:
	@bash scripts/ensure_venv.sh runtime

demo: venv-runtime
	$(VENV)/bin/tensornet-fast energies
	@echo "(make demo runs the plain-PyTorch kernels; make test compiles the C++ ones)"

test: lint
	$(PY) -m pytest -q

# The inner loop (~3 min on 2 cores): everything but the slow end-to-end tests (torch.compile,
# AOTInductor export, Triton interpreter parity, Dask/process pools, benchmark smoke runs).
test-fast: venv
	$(PY) -m pytest -q -x -m "not slow"

lint: venv
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
