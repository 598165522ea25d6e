"""Shared fixtures. The parity report collects measured errors and prints the worst per dtype."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# The GPU lane (bench/run_gpu.sh) sets TNF_GPU_LANE=1: there CUDA must be present, and the
# Triton tests run on it. Everywhere else Triton kernels run under its interpreter on CPU
# tensors, which must be switched on before Triton is first imported.
if os.environ.get("TNF_GPU_LANE") == "1":
    import torch

    assert torch.cuda.is_available(), "TNF_GPU_LANE=1 but torch sees no CUDA device"
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_PARITY: list[tuple[str, int, float, float]] = []

# Files of end-to-end runs (torch.compile, AOTInductor export and its C++ host, the Triton
# interpreter, example scripts, Dask / process pools, benchmark smoke runs, the matgl
# oracles): marked ``slow`` so
# that ``make test-fast`` (``-m "not slow"``) leaves them out. ``make test`` runs everything.
SLOW_FILES = {
    "backends/test_triton_backend.py",
    "backends/test_triton_compile.py",
    "backends/test_triton_kernels.py",
    "benchmarks/test_bench_cpu.py",
    "benchmarks/test_bench_smoke.py",
    "md/test_compiled.py",
    "md/test_export.py",
    "model/test_matgl.py",
    "screening/test_screen.py",
}


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if os.path.relpath(str(item.fspath), here) in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def parity_report():
    def record(what: str, precision: int, energy_err: float, force_err: float) -> None:
        _PARITY.append((what, precision, energy_err, force_err))

    return record


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    terminalreporter.section("parity vs torchmd-net 3.1 (relative errors)")
    for precision in sorted({p for _, p, _, _ in _PARITY}):
        rows = [r for r in _PARITY if r[1] == precision]
        worst_e = max(rows, key=lambda r: r[2])
        worst_f = max(rows, key=lambda r: r[3])
        terminalreporter.write_line(
            f"float{precision}: {len(rows)} comparisons; worst energy {worst_e[2]:.2e} "
            f"({worst_e[0]}), worst forces {worst_f[3]:.2e} ({worst_f[0]})"
        )
