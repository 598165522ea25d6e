"""The MD step (tensornet_fast.md.MDStep), eager (candidates cut to the exact pairs each step,
the model's own backend: the cpu kernels on CPU) and static (fixed capacity, traceable math):
equal to the plain model call within the tolerance table, a reused Verlet list gives the same
results as a fresh one, capacity overflow raises with the capacity to use; the CUDA-graph replay
equals the eager step (GPU only)."""

from __future__ import annotations

import pytest
import torch
from oracle import make_checkpoint, make_small_checkpoint, pair_prior
from paths import ROOT
from systems import molecule_batch, water_box
from tolerances import assert_close

import tensornet_fast as tnf
from tensornet_fast.md import CapacityError, MDStep


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_small_checkpoint(
        tmp_path_factory.mktemp("md") / "m.ckpt",
        seed=21,
        precision=64,
    )


def _model(ckpt, dtype=torch.float64, device="cpu", backend="reference"):
    return tnf.load_model(
        ckpt, backend=backend, precision=64 if dtype == torch.float64 else 32, device=device
    )


def _systems(dtype):
    z, pos, batch = molecule_batch(dtype=dtype)
    wz, wpos, wbox = water_box(2, spacing=3.2, seed=5, dtype=dtype)
    wbox = wbox.clone()
    wbox[1, 0], wbox[2, 1] = 0.6, -0.4  # triclinic
    return {"molecules": (z, pos, batch, None), "water": (wz, wpos, None, wbox)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("system", ["molecules", "water"])
@pytest.mark.parametrize("path", ["eager-cpu", "eager-reference", "static"])
def test_step_matches_model(ckpt, dtype, system, path):
    model = _model(ckpt, dtype, backend="cpu" if path == "eager-cpu" else "reference")
    z, pos, batch, box = _systems(dtype)[system]
    step = MDStep(model, z, pos, batch, box, skin=0.4, static=path == "static")
    assert step.static == (path == "static") and not step.cuda_graph
    if step.static:
        assert step.capacity > step.n_edges
    else:
        assert step.capacity is None
    gen = torch.Generator().manual_seed(0)
    for k in range(3):
        p = pos + 0.05 * torch.randn(pos.shape, generator=gen, dtype=dtype)
        energy, forces = step(p)
        ref_e, ref_f = model(z, p, batch, box)
        assert_close(energy, ref_e, dtype, "energy", f"MDStep {system} step {k}")
        assert_close(forces, ref_f, dtype, "forces", f"MDStep {system} step {k}")
    assert step.rebuilds == 1  # 0.05 A noise around the start stays within skin / 2


@pytest.mark.parametrize("system", ["molecules", "water"])
@pytest.mark.parametrize("static", [False, True])
def test_skin_reuse_gives_fresh_results(ckpt, system, static):
    """Positions moved by < skin/2: the reused candidate list selects exactly the pairs of a
    fresh radius graph and gives the results of a freshly built step (eager: bitwise)."""
    model = _model(ckpt, backend="reference" if static else "cpu")
    z, pos, batch, box = _systems(torch.float64)[system]
    skin = 0.6
    step = MDStep(model, z, pos, batch, box, skin=skin, static=static)
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(pos.shape, generator=gen, dtype=pos.dtype)
    delta = delta / delta.norm(dim=1).max() * (0.49 * skin / 2)
    moved = pos + delta
    energy, forces = step(moved)
    assert step.rebuilds == 1
    fresh = MDStep(model, z, moved, batch, box, skin=skin, static=static)
    fresh_e, fresh_f = fresh(moved)
    assert torch.allclose(energy, fresh_e, rtol=1e-13, atol=0)
    assert torch.allclose(forces, fresh_f, rtol=0, atol=1e-13 * float(fresh_f.abs().max()))
    if not static:  # the same edges in the same order as the plain call's search
        plain_e, plain_f = model(z, moved, batch, box)
        assert torch.equal(energy, plain_e) and torch.equal(forces, plain_f)
    # The reused list, cut at the cutoff, is exactly the radius graph at the new positions.
    from tensornet_fast.md.traceable import edge_geometry

    _, dist, _, _ = edge_geometry(model, moved, step.batch, step.cell, step.edges())
    active = step.valid & (dist < model.cutoff)
    nl = tnf.radius_graph_full(moved, model.cutoff, step.batch, box, loop=True)
    assert torch.equal(step.edge_index[:, active], nl.edge_index)


def test_rebuild_after_large_move(ckpt):
    model = _model(ckpt)
    z, pos, batch, _ = _systems(torch.float64)["molecules"]
    step = MDStep(model, z, pos, batch, skin=0.3)
    moved = pos.clone()
    moved[3] += torch.tensor([0.2, 0.0, 0.0], dtype=pos.dtype)  # > skin / 2
    energy, forces = step(moved)
    assert step.rebuilds == 2
    ref_e, ref_f = model(z, moved, batch)
    assert_close(energy, ref_e, torch.float64, "energy", "MDStep after rebuild")
    assert_close(forces, ref_f, torch.float64, "forces", "MDStep after rebuild")


def test_capacity_overflow_raises_with_capacity_to_use(ckpt):
    model = _model(ckpt)
    z, pos, _, box = _systems(torch.float64)["water"]
    with pytest.raises(CapacityError, match=r"capacity=\d+"):
        MDStep(model, z, pos, box=box, capacity=10, static=True)
    step = MDStep(model, z, pos, box=box, skin=0.3, capacity_factor=1.0, static=True)
    assert step.capacity == step.n_edges + 8
    squeezed_box = box * 0.85
    squeezed = pos * 0.85  # denser: more pairs within cutoff + skin
    # The box is fixed for an MDStep: squeeze the atoms only, in the same cell.
    with pytest.raises(CapacityError) as info:
        step(squeezed)
    msg = str(info.value)
    assert f"exceed the static capacity {step.capacity}" in msg
    suggested = int(msg.split("capacity=")[1].split()[0].rstrip(","))
    bigger = MDStep(model, z, squeezed, box=box, skin=0.3, capacity=suggested, static=True)
    e, f = bigger(squeezed)
    ref_e, ref_f = model(z, squeezed, box=box)
    assert_close(e, ref_e, torch.float64, "energy", "MDStep suggested capacity")
    del squeezed_box


def test_step_rejects_bad_positions(ckpt):
    model = _model(ckpt)
    z, pos, batch, _ = _systems(torch.float64)["molecules"]
    step = MDStep(model, z, pos, batch)
    with pytest.raises(tnf.InputError, match="pos must be"):
        step(pos[:-1])
    with pytest.raises(tnf.InputError, match="cuda_graph=True"):
        MDStep(model, z, pos, batch, cuda_graph=True)
    bad = pos.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(tnf.InputError, match="NaN"):
        step(bad)


def test_eager_step_grows_without_capacity(ckpt):
    """The eager candidate list has no capacity: a denser configuration just searches again."""
    model = _model(ckpt, backend="cpu")
    z, pos, _, box = _systems(torch.float64)["water"]
    step = MDStep(model, z, pos, box=box, skin=0.3)
    before = step.n_edges
    squeezed = pos * 0.85
    e, f = step(squeezed)
    assert step.rebuilds == 2 and step.n_edges > before
    ref_e, ref_f = model(z, squeezed, box=box)
    assert torch.equal(e, ref_e) and torch.equal(f, ref_f)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_graph_replay_matches_eager(ckpt, dtype):
    model = _model(ckpt, dtype, device="cuda")
    z, pos, batch, box = (t.cuda() if t is not None else None for t in _systems(dtype)["water"])
    graph_step = MDStep(model, z, pos, batch, box, skin=0.6)
    eager_step = MDStep(model, z, pos, batch, box, skin=0.6, cuda_graph=False)
    assert graph_step.graph is not None
    gen = torch.Generator(device="cuda").manual_seed(0)
    for k in range(4):
        p = pos + (0.05 if k < 3 else 0.5) * torch.randn(
            pos.shape, generator=gen, dtype=dtype, device="cuda"
        )
        e, f = graph_step(p)
        e, f = e.clone(), f.clone()
        e_ref, f_ref = eager_step(p)
        ref_e, ref_f = model(z, p, batch, box)
        assert_close(e, e_ref, dtype, "energy", f"graph vs eager step {k}")
        assert_close(f, f_ref, dtype, "forces", f"graph vs eager step {k}")
        assert_close(e, ref_e, dtype, "energy", f"graph vs model step {k}")
        assert_close(f, ref_f, dtype, "forces", f"graph vs model step {k}")
    assert graph_step.rebuilds == 2  # the last, larger move rebuilt the list in place


def test_md_example_conserves_energy():
    """examples/md_step.py: NVE velocity Verlet driven by MDStep, total energy conserved."""
    import os
    import subprocess
    import sys

    root = ROOT
    out = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "md_step.py"), "--steps", "100"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if "E_tot" in line]
    e_pot = [float(parts[3]) for parts in lines]
    e_tot = [float(parts[5]) for parts in lines]
    assert len(e_tot) == 3
    assert max(e_pot) - min(e_pot) > 0.02  # it moves
    assert max(e_tot) - min(e_tot) < 0.1 * (max(e_pot) - min(e_pot))


VARIANTS = {
    # D2's cutoff (8) exceeds the network's (5): the candidate list follows the largest cutoff,
    # and D2 takes only the zero-shift pairs under a box (torchmd-net 3.1 ignores images).
    "zbl_d2": {"prior_model": [pair_prior("ZBL", 3.0, 64), pair_prior("D2", 8.0, 128)]},
    "lower_cutoff_so3": {
        "cutoff_lower": 0.9,
        "cutoff_upper": 4.5,
        "equivariance_invariance_group": "SO(3)",
    },
    "atomref_mean_gauss": {
        "prior_model": {"Atomref": {"max_z": 20}},
        "standardize": True,
        "reduce_op": "mean",
        "rbf_type": "gauss",
    },
    "charge": {"charge": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("static", [True, False])
def test_traceable_core_variants(variant, static, tmp_path):
    """MDStep on model variants: priors with a cutoff beyond the network's, lower cutoff, SO(3),
    Atomref + mean/std + mean reduction, total charge; molecules and a triclinic box, float64.
    Static: the traceable core (as under compile / export); eager: the cpu kernels."""
    ckpt = make_checkpoint(
        tmp_path / "v.ckpt",
        seed=3,
        precision=64,
        embedding_dimension=16,
        num_rbf=8,
        **{"cutoff_upper": 5.0, **VARIANTS[variant]},
        **({"mean": -1.5, "std": 0.7} if variant.startswith("atomref") else {}),
    )
    model = _model(ckpt, backend="reference" if static else "cpu")
    for name, (z, pos, batch, box) in _systems(torch.float64).items():
        n_mol = 1 if batch is None else int(batch.max()) + 1
        q = torch.arange(n_mol, dtype=torch.float64) - 1.0 if variant == "charge" else None
        step = MDStep(model, z, pos, batch, box, q=q, skin=0.3, static=static)
        moved = pos + 0.02 * torch.randn(
            pos.shape, generator=torch.Generator().manual_seed(2), dtype=pos.dtype
        )
        energy, forces = step(moved)
        ref_e, ref_f = model(z, moved, batch, box, q=q)
        assert_close(energy, ref_e, torch.float64, "energy", f"{variant} {name}")
        assert_close(forces, ref_f, torch.float64, "forces", f"{variant} {name}")
