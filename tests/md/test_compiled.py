"""torch.compile(fullgraph=True) over energy + forces (tensornet_fast.md.compile): compiled equals
eager within the tolerance table, for every available backend that is traceable; the others
refuse with a clear error. A graph break would fail compilation (fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
from oracle import make_small_checkpoint
from systems import molecule_batch, water_box
from tolerances import assert_close

import tensornet_fast as tnf
from tensornet_fast.backends import backend_class
from tensornet_fast.errors import NotTraceable
from tensornet_fast.md.compile import compile_model

TRACEABLE_BACKENDS = [b for b in tnf.available_backends() if backend_class(b).traceable]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_small_checkpoint(
        tmp_path_factory.mktemp("compiled") / "m.ckpt",
        seed=8,
        precision=64,
        num_layers=1,
    )


@pytest.mark.parametrize("backend", tnf.available_backends())
def test_compiled_matches_eager(ckpt, backend):
    model = tnf.load_model(ckpt, backend=backend)
    if backend not in TRACEABLE_BACKENDS:
        with pytest.raises(NotTraceable, match="backend='reference'"):
            compile_model(model)
        return
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()

    def compiles():
        return counters["stats"]["unique_graphs"]

    compiled = compile_model(model)
    eager = tnf.load_model(ckpt, backend="reference")
    dtype = model.dtype
    # Two batches with different molecule, atom and edge counts: dynamic shapes, no
    # recompilation for the second.
    for names in (("CH3OH", "C6H6", "H2O"), ("CH3Cl", "CH3CH2OH")):
        z, pos, batch = molecule_batch(names=names, dtype=dtype)
        energy, forces = compiled(z, pos, batch)
        ref_e, ref_f = eager(z, pos, batch)
        assert_close(energy, ref_e, dtype, "energy", f"compiled {backend} {names}")
        assert_close(forces, ref_f, dtype, "forces", f"compiled {backend} {names}")
    assert compiles() == 1, "the second system recompiled (dynamic shapes expected)"


@pytest.mark.parametrize("backend", TRACEABLE_BACKENDS)
def test_compiled_periodic_stress_fullgraph(ckpt, backend):
    """Periodic cell with stress: Dynamo captures it as one graph (fullgraph=True: a graph break
    would raise) with the right values. Run with torch.compile's "eager" backend: Inductor's
    ~1 min CPU compilation is spent once, in test_compiled_matches_eager, on the same core."""
    model = tnf.load_model(ckpt, backend=backend)
    torch._dynamo.reset()
    compiled = compile_model(model, backend="eager")
    eager = tnf.load_model(ckpt, backend="reference")
    dtype = model.dtype
    z, pos, box = water_box(2, spacing=3.2, seed=6, dtype=dtype)
    box = box.clone()
    box[2, 0] = 0.5
    out = compiled.compute(z, pos, box=box, stress=True)
    ref = eager.compute(z, pos, box=box, stress=True)
    for key, kind in (("energy", "energy"), ("forces", "forces"), ("stress", "forces")):
        assert_close(out[key], ref[key], dtype, kind, f"compiled {backend} periodic {key}")
