# Quick start: `make demo` (energies and forces of the bundled molecules with the default model)
# and `make test` (the whole test suite). Both create or reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test lint
venv:
	@bash scripts/ensure_venv.sh

demo: venv
	$(VENV)/bin/tensornet-fast energies

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check tensornet_fast kernels tests bench
	$(VENV)/bin/ruff format --check tensornet_fast kernels tests bench
