"""The whole model on the Triton backend against torchmd-net 3.1 (pure path, tests/oracle.py) and
the reference backend: exact mode within tests/tolerances.py, tabulated mode within
FAST_MODE_FACTOR x the exact float32 error, periodic boxes, stress, gradcheck, dispatch.

Runs under TRITON_INTERPRET=1 on CPU (conftest.py), on CUDA in the GPU lane; small models
(F = 16, K = 8) and systems keep the interpreter lane to about a minute.
"""

from __future__ import annotations

import pytest
import torch
from oracle import load_oracle, make_checkpoint, oracle_energy_forces
from systems import molecule_batch, water_box
from tolerances import FAST_MODE_FACTOR, FP32_NOISE_FLOOR, assert_close, relative_error

import tensornet_fast as tnf
from tensornet_fast.backends import BackendUnavailable

pytestmark = pytest.mark.triton
pytest.importorskip("triton", reason="the triton extra is part of the test install")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMALL = dict(embedding_dimension=16, num_rbf=8)
CASES = {
    "o3_2layers": {},
    "so3_1layer": {"num_layers": 1, "equivariance_invariance_group": "SO(3)"},
    "o3_0layers": {"num_layers": 0},
    "lower_cutoff_gauss": {"cutoff_lower": 0.9, "cutoff_upper": 4.5, "rbf_type": "gauss"},
    "charge_priors": {
        "charge": True,
        "prior_model": {"Atomref": {"max_z": 20}},
        "standardize": True,
    },
}
DTYPES = {32: torch.float32, 64: torch.float64}
Q = torch.tensor([1.0, -1.0, 0.0, 2.0])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton_backend")
    out = {}
    for k, (name, hp) in enumerate(CASES.items()):
        for precision in DTYPES:
            std = dict(mean=-2.5, std=1.7) if hp.get("standardize") else {}
            out[name, precision] = make_checkpoint(
                root / f"{name}_{precision}.ckpt",
                seed=60 + k,
                precision=precision,
                **{**SMALL, **hp},
                **std,
            )
    return out


def _run(model, z, pos, batch=None, box=None, q=None):
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    y, f = model(dev(z), dev(pos), dev(batch), box=dev(box), q=dev(q))
    return y.cpu(), f.cpu()


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_exact_mode_matches_torchmd_net_and_reference(ckpts, case, precision, parity_report):
    dtype = DTYPES[precision]
    z, pos, batch = molecule_batch(dtype=dtype)
    q = Q.to(dtype) if CASES[case].get("charge") else None
    path = ckpts[case, precision]
    y_tmd, f_tmd = oracle_energy_forces(load_oracle(path), z, pos, batch, q=q)
    model = tnf.load_model(path, backend="triton", device=DEVICE)
    assert model.backend == "triton" and model.filter_mode == "exact"
    y, f = _run(model, z, pos, batch, q=q)
    errs = (
        assert_close(y, y_tmd, dtype, "energy", case),
        assert_close(f, f_tmd, dtype, "forces", case),
    )
    parity_report(f"triton-exact {case}", precision, *errs)
    # against the float64 reference with the same weights: two float32 paths can each be ~1e-6
    # off in opposite directions, the float64 one is the trusted value
    ref64 = tnf.load_model(path, backend="reference", precision=64)
    y_ref, f_ref = ref64(z, pos.double(), batch, q=None if q is None else q.double())
    assert_close(y, y_ref, dtype, "energy", case)
    assert_close(f, f_ref, dtype, "forces", case)
    assert f_tmd.abs().max() > 1e-3  # non-trivial forces, so the comparison can fail


@pytest.mark.parametrize("precision", DTYPES)
def test_periodic_box_and_stress(tmp_path, precision, parity_report):
    """8 waters in a 6.2 A box, r_c = 3 (torchmd-net needs r_c <= half the box): energy and
    forces vs torchmd-net, stress vs the reference backend (torchmd-net has none)."""
    dtype = DTYPES[precision]
    path = make_checkpoint(
        tmp_path / "pbc.ckpt", seed=7, precision=precision, cutoff_upper=3.0, **SMALL
    )
    z, pos, box = water_box(2, spacing=3.1, seed=5, dtype=dtype)
    y_tmd, f_tmd = oracle_energy_forces(load_oracle(path), z, pos, box=box)
    model = tnf.load_model(path, backend="triton", device=DEVICE)
    y, f = _run(model, z, pos, box=box)
    errs = (
        assert_close(y, y_tmd, dtype, "energy", "pbc"),
        assert_close(f, f_tmd, dtype, "forces", "pbc"),
    )
    parity_report("triton-exact periodic", precision, *errs)
    out = model.compute(z.to(DEVICE), pos.to(DEVICE), box=box.to(DEVICE), stress=True)
    ref = tnf.load_model(path, backend="reference").compute(z, pos, box=box, stress=True)
    assert_close(out["stress"].cpu(), ref["stress"], dtype, "forces", "stress")


def _fp64_errors(path, z, pos, batch, mode, precision):
    """(energy, force) relative errors of the triton backend at `precision` vs the float64
    reference backend with the same weights."""
    y64, f64 = tnf.load_model(path, backend="reference", precision=64)(z, pos, batch)
    model = tnf.load_model(
        path, backend="triton", filter_mode=mode, precision=precision, device=DEVICE
    )
    y, f = _run(model, z, pos.to(model.dtype), batch)
    return relative_error(y, y64), relative_error(f, f64)


def test_tabulated_error_bound(ckpts):
    """docs/spec.md: a fast mode stays within FAST_MODE_FACTOR x the exact float32 path's error
    (both vs float64); the table's own error (float64 tabulated) is far below it."""
    z, pos, batch = molecule_batch(dtype=torch.float64)
    path = ckpts["o3_2layers", 32]
    e32, f32 = _fp64_errors(path, z, pos, batch, "exact", 32)
    et32, ft32 = _fp64_errors(path, z, pos, batch, "tabulated", 32)
    et64, ft64 = _fp64_errors(path, z, pos, batch, "tabulated", 64)
    assert et32 <= FAST_MODE_FACTOR * max(e32, FP32_NOISE_FLOOR), (et32, e32)
    assert ft32 <= FAST_MODE_FACTOR * max(f32, FP32_NOISE_FLOOR), (ft32, f32)
    assert et64 < 1e-8 and ft64 < 1e-6, (et64, ft64)


@pytest.mark.parametrize("mode", ["exact", "tabulated"])
def test_gradcheck_positions(tmp_path, mode):
    """Forces are the exact gradient of the same function (fp64 finite differences)."""
    path = make_checkpoint(
        tmp_path / "g.ckpt",
        seed=12,
        precision=64,
        embedding_dimension=8,
        num_rbf=6,
        cutoff_lower=0.5,
        charge=True,
    )
    model = tnf.load_model(
        path, backend="triton", filter_mode=mode, derivative=False, device=DEVICE
    )
    z, pos, batch = molecule_batch(("H2O", "H2O"), jitter=0.1)
    z, pos, batch = z.to(DEVICE), pos.to(DEVICE), batch.to(DEVICE)
    q = torch.tensor([1.0, -1.0], dtype=torch.float64, device=DEVICE)

    def energy(p):
        return model(z, p, batch, q=q)[0]

    # fast_mode: random directional derivatives, 2 model calls per check instead of 2 per
    # coordinate (the interpreter lane could not afford 36)
    for seed in range(3):
        torch.manual_seed(seed)
        assert torch.autograd.gradcheck(
            energy, (pos.clone().requires_grad_(True),), eps=1e-6, atol=1e-8, rtol=1e-6,
            fast_mode=True,
        )  # fmt: skip


def test_rotation_invariance_and_determinism(ckpts):
    z, pos, batch = molecule_batch(dtype=torch.float64)
    model = tnf.load_model(ckpts["o3_2layers", 64], backend="triton", device=DEVICE)
    y1, f1 = _run(model, z, pos, batch)
    y2, f2 = _run(model, z, pos, batch)
    assert torch.equal(y1, y2) and torch.equal(f1, f2)
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator()
                                      .manual_seed(0)))[0]  # fmt: skip
    y3, f3 = _run(model, z, pos @ rot.T, batch)
    assert_close(y3, y1, torch.float64, "energy")
    assert_close(f3, f1 @ rot.T, torch.float64, "forces")


def test_backend_dispatch(ckpts, monkeypatch):
    path = ckpts["so3_1layer", 64]
    assert "triton" in tnf.available_backends()
    assert tnf.resolve_backend("auto", device="cuda") == "triton"
    assert tnf.resolve_backend("auto", device="cpu") == "cpu"
    monkeypatch.setenv("TENSORNET_FAST_BACKEND", "triton")
    assert tnf.load_model(path, device=DEVICE).backend == "triton"
    if DEVICE.type == "cpu":
        # without the interpreter and without CUDA an explicit request cannot be honoured
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            tnf.load_model(path, backend="triton")
        monkeypatch.delenv("TENSORNET_FAST_BACKEND")
        assert tnf.resolve_backend("auto", device="cuda") == "reference"  # warns once


def test_training_mode_uses_reference_math(ckpts):
    z, pos, batch = molecule_batch(dtype=torch.float64)
    model = tnf.load_model(ckpts["o3_2layers", 64], backend="triton", device=DEVICE)
    y_eval, _ = _run(model, z, pos, batch)
    model.train()
    y, _ = _run(model, z, pos, batch)
    assert_close(y, y_eval, torch.float64, "energy")


@pytest.mark.parametrize("mode", ["exact", "tabulated"])
def test_torch_compile_fullgraph(ckpts, mode):
    """The Triton backend's forward traces without graph breaks (custom ops with fake
    implementations; per-edge filters instead of torch.unique when compiling), and the compiled
    function's gradients through the registered backward equal eager."""
    from tensornet_fast.backends.triton.backend import atomic_energies
    from tensornet_fast.neighbors import NeighborList

    model = tnf.load_model(ckpts["o3_2layers", 64], backend="triton", filter_mode=mode,
                           device=DEVICE)  # fmt: skip
    z, pos, batch = molecule_batch(("CH3OH", "H2O"), dtype=torch.float64)
    nl = tnf.radius_graph_full(pos.to(DEVICE), model.cutoff, batch=batch.to(DEVICE), loop=True)
    q = torch.ones(z.shape[0], dtype=torch.float64, device=DEVICE)
    z = z.to(DEVICE)

    def energy(vec: torch.Tensor) -> torch.Tensor:
        is_self = (vec * vec).sum(1) == 0
        dist = torch.where(is_self, 0.0, (vec * vec).sum(1).clamp_min(1e-30).sqrt())
        graph = NeighborList(nl.edge_index, vec, dist, nl.shifts, nl.row_ptr)
        return atomic_energies(model, z, graph, q).sum()

    torch._dynamo.reset()
    compiled = torch.compile(energy, fullgraph=True, backend="aot_eager")
    vec_e = nl.edge_vec.detach().clone().requires_grad_(True)
    vec_c = nl.edge_vec.detach().clone().requires_grad_(True)
    y_e, y_c = energy(vec_e), compiled(vec_c)
    (g_e,), (g_c,) = torch.autograd.grad(y_e, vec_e), torch.autograd.grad(y_c, vec_c)
    assert_close(y_c.detach().cpu(), y_e.detach().cpu(), torch.float64, "energy", "compiled")
    assert_close(g_c.cpu(), g_e.cpu(), torch.float64, "forces", "compiled")


@pytest.mark.parametrize("mode", ["exact", "tabulated"])
def test_md_step_with_triton_kernels(tmp_path, mode):
    """MDStep (static-capacity Verlet list with padding edges, the path a CUDA graph captures)
    on the Triton kernels equals the plain model call; padding and skin edges add exact zeros."""
    from tensornet_fast.md import MDStep

    path = make_checkpoint(tmp_path / "md.ckpt", seed=21, precision=64, cutoff_upper=3.5, **SMALL)
    model = tnf.load_model(path, backend="triton", filter_mode=mode, device=DEVICE)
    z, pos, box = water_box(2, spacing=3.2, seed=5, dtype=torch.float64)
    z, pos, box = z.to(DEVICE), pos.to(DEVICE), box.to(DEVICE)
    step = MDStep(model, z, pos, None, box, skin=0.5, static=True)
    assert step.capacity > step.n_edges  # padding edges present
    p = pos + 0.05 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(0),
                                 dtype=pos.dtype).to(DEVICE)  # fmt: skip
    energy, forces = step(p)
    ref_e, ref_f = model(z, p, box=box)
    assert_close(energy.cpu(), ref_e.cpu(), torch.float64, "energy", f"MDStep triton {mode}")
    assert_close(forces.cpu(), ref_f.cpu(), torch.float64, "forces", f"MDStep triton {mode}")
