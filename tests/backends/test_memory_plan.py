"""The Triton backend's memory plan (docs/gpu.md "Memory plan", bench/memory_plan.py), on CPU
under the Triton interpreter: the lean backward gives the plain-autograd numbers (energy,
forces, stress) and keeps fewer bytes alive; the stand-in kernels bench/memory_plan.py uses at
large sizes allocate exactly what the real kernels do, so its per-atom numbers are the plan's."""

from __future__ import annotations

import sys

import pytest
import torch
from paths import ROOT

sys.path.insert(0, ROOT)
pytestmark = pytest.mark.triton
pytest.importorskip("triton")

from bench import memory_plan as mp  # noqa: E402
from bench import systems  # noqa: E402
from tensornet_fast.backends.triton import backend as tb  # noqa: E402

# A small model of the benchmark's shape (2 layers) so the interpreter runs it in seconds.
SMALL = dict(embedding_dimension=16, num_rbf=8)


@pytest.mark.slow
def test_lean_backward_equals_plain_autograd(monkeypatch):
    """Tabulated here; exact mode's lean path is what tests/backends/test_triton_backend.py
    compares with torchmd-net."""
    model = mp.bench_model("tabulated", torch.float64, 5.0, **SMALL)
    s = systems.water_box(24, seed=1)
    z, pos, box = (torch.as_tensor(s.z), torch.as_tensor(s.pos), torch.as_tensor(s.box))
    lean = model.compute(z, pos, box=box, stress=True)
    monkeypatch.setattr(tb, "LEAN_BACKWARD", False)
    plain = model.compute(z, pos, box=box, stress=True)
    for key in ("energy", "forces", "stress"):
        err = float((lean[key] - plain[key]).abs().max() / plain[key].abs().max())
        assert err <= 1e-12, (key, err)  # the same math in another order: float64 rounding


@pytest.mark.slow
def test_fake_kernels_allocate_what_real_kernels_do():
    """Same operators, same allocations; the interpreter alone holds host views of a launch's
    tensor arguments a little longer than the launch (a GPU launch holds none): measured +2
    [N, 9, F] tensors (27.6 KB at 24 atoms, F = 16), the update's inputs. The allowance is that,
    not a percentage."""
    model = mp.bench_model("tabulated", torch.float32, 5.0, **SMALL)
    fake = mp.measure(model, 24, fake=True)
    real = mp.measure(model, 24, fake=False)
    assert fake.edges == real.edges > 0
    one = 24 * 9 * SMALL["embedding_dimension"] * 4  # [N, 9, F] float32
    assert 0 <= real.peak_bytes - fake.peak_bytes <= 2 * one, (fake, real)


@pytest.mark.slow
def test_lean_backward_keeps_less_alive():
    """At F = 128 (the benchmark model) with stand-in kernels: the lean plan's peak is at most
    60 % of plain autograd's (docs/gpu.md: 57.6 vs 116.9 KiB per atom at 3000 atoms) and below
    the 80 KB per atom that 1M atoms in 80 GB allow."""
    model = mp.bench_model("tabulated", torch.float32, 5.0)
    lean = mp.measure(model, 375, fake=True)
    plain = mp.measure(model, 375, fake=True, plain=True)
    assert lean.edges == plain.edges
    assert lean.peak_bytes <= 0.6 * plain.peak_bytes, (lean.per_atom, plain.per_atom)
    assert lean.per_atom < 80e3, lean
