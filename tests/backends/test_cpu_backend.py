"""The "cpu" backend (tensornet_fast/backends/cpu/, csrc/) against torchmd-net 3.1
(pure path, tests/oracle.py) and the reference backend, in exact and tabulated filter modes.

Small models (F=16, K=8) and systems (tens of atoms) keep this file well under a minute.
"""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import load_oracle, make_checkpoint, oracle_energy_forces
from systems import molecule_batch, water_box
from tolerances import (
    FAST_MODE_FACTOR,
    FP32_NOISE_FLOOR,
    TOLERANCES,
    assert_close,
    relative_error,
)

import tensornet_fast as tnf
from tensornet_fast.backends import FILTER_MODES, base
from tensornet_fast.backends.cpu import CpuBackend
from tensornet_fast.backends.cpu.fused import _RowStack
from tensornet_fast.backends.cpu.ops import compiled_ops
from tensornet_fast.backends.shared.cache import weights_key
from tensornet_fast.backends.shared.radial import ACTIVATION_FUNCTIONS
from tensornet_fast.backends.shared.tables import Spline, build_splines

SMALL = dict(embedding_dimension=16, num_rbf=8)
CASES = {
    "o3_2layers": {},
    "so3_2layers": {"equivariance_invariance_group": "SO(3)"},
    "o3_0layers": {"num_layers": 0},
    "so3_1layer": {"num_layers": 1, "equivariance_invariance_group": "SO(3)"},
    "lower_cutoff": {"cutoff_lower": 0.9, "cutoff_upper": 4.5},
    "gauss_rbf_tanh": {"rbf_type": "gauss", "num_rbf": 6, "activation": "tanh"},
    "charge": {"charge": True},
    "atomref_standardize": {"prior_model": {"Atomref": {"max_z": 20}}, "standardize": True},
}
DTYPES = {32: torch.float32, 64: torch.float64}
Q = torch.tensor([1.0, -1.0, 0.0, 2.0])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu_backend")
    out = {}
    for k, (name, hp) in enumerate(CASES.items()):
        for precision in DTYPES:
            std = dict(mean=-2.5, std=1.7) if hp.get("standardize") else {}
            out[name, precision] = make_checkpoint(
                root / f"{name}_{precision}.ckpt",
                seed=40 + k,
                precision=precision,
                **{**SMALL, **hp},
                **std,
            )
    return out


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_exact_mode_matches_torchmd_net_and_reference(ckpts, case, precision, parity_report):
    dtype = DTYPES[precision]
    z, pos, batch = molecule_batch(dtype=dtype)
    q = Q.to(dtype) if CASES[case].get("charge") else None
    path = ckpts[case, precision]
    y_tmd, f_tmd = oracle_energy_forces(load_oracle(path), z, pos, batch, q=q)
    model = tnf.load_model(path, backend="cpu", filter_mode="exact")
    assert model.backend == "cpu" and model.filter_mode == "exact"
    y, f = model(z, pos, batch, q=q)
    errs = (
        assert_close(y, y_tmd, dtype, "energy", case),
        assert_close(f, f_tmd, dtype, "forces", case),
    )
    parity_report(f"cpu-exact {case}", precision, *errs)
    # against the float64 reference with the same weights: two float32 paths can each be ~1e-6
    # off in opposite directions, the float64 one is the trusted value
    ref64 = tnf.load_model(path, backend="reference", precision=64)
    y_ref, f_ref = ref64(z, pos.double(), batch, q=None if q is None else q.double())
    assert_close(y, y_ref, dtype, "energy", case)
    assert_close(f, f_ref, dtype, "forces", case)
    assert f_tmd.abs().max() > 1e-3  # non-trivial forces, so the comparison can fail


@pytest.mark.parametrize("precision", DTYPES)
def test_periodic_box(tmp_path, precision, parity_report):
    """81 waters' atoms in a 9.75 A box with r_c = 4.5 (torchmd-net needs r_c <= half the box)."""
    dtype = DTYPES[precision]
    path = make_checkpoint(
        tmp_path / "pbc.ckpt", seed=7, precision=precision, cutoff_upper=4.5, **SMALL
    )
    z, pos, box = water_box(3, spacing=3.25, seed=5, dtype=dtype)
    y_tmd, f_tmd = oracle_energy_forces(load_oracle(path), z, pos, box=box)
    for mode in FILTER_MODES:
        y, f = tnf.load_model(path, backend="cpu", filter_mode=mode)(z, pos, box=box)
        if mode == "exact":
            errs = (
                assert_close(y, y_tmd, dtype, "energy", "pbc"),
                assert_close(f, f_tmd, dtype, "forces", "pbc"),
            )
            parity_report("cpu-exact periodic", precision, *errs)
        else:  # the table error is below float32 rounding (see test_tabulated_error_bound)
            assert relative_error(f, f_tmd) < 1e-5 and relative_error(y, y_tmd) < 2e-6


def _fp64_errors(path, z, pos, batch, mode, precision):
    """(energy, force) relative errors of the cpu backend at `precision` vs the float64
    reference backend running the same weights."""
    y64, f64 = tnf.load_model(path, backend="reference", precision=64)(z, pos, batch)
    model = tnf.load_model(path, backend="cpu", filter_mode=mode, precision=precision)
    y, f = model(z, pos.to(model.dtype), batch)
    return relative_error(y, y64), relative_error(f, f64)


@pytest.mark.parametrize("case", ["o3_2layers", "so3_2layers", "lower_cutoff"])
def test_tabulated_error_bound(ckpts, case):
    """docs/spec.md: a fast mode stays within FAST_MODE_FACTOR x the error of the exact float32 path
    (both against float64). The table's own error (float64 tabulated) is far below it; measured
    ~4e-11 energy, ~3e-8 forces with 2048 intervals."""
    z, pos, batch = molecule_batch(dtype=torch.float64)
    path = ckpts[case, 32]
    e32, f32 = _fp64_errors(path, z, pos, batch, "exact", 32)
    et32, ft32 = _fp64_errors(path, z, pos, batch, "tabulated", 32)
    et64, ft64 = _fp64_errors(path, z, pos, batch, "tabulated", 64)
    assert et32 <= FAST_MODE_FACTOR * max(e32, FP32_NOISE_FLOOR), (et32, e32)
    assert ft32 <= FAST_MODE_FACTOR * max(f32, FP32_NOISE_FLOOR), (ft32, f32)
    assert et64 < 1e-8 and ft64 < 1e-6, (et64, ft64)
    # a coarse table must be visibly worse: the test can detect a wrong spline
    model = tnf.load_model(path, backend="cpu", filter_mode="tabulated", precision=64)
    model._derived_state["filter_tables"] = (weights_key(model), build_splines(model, 16))
    y64, f64 = tnf.load_model(path, backend="reference", precision=64)(z, pos, batch)
    assert relative_error(model(z, pos, batch)[1], f64) > 10 * ft64


@pytest.mark.parametrize("case", ["o3_2layers", "lower_cutoff", "gauss_rbf_tanh"])
def test_auto_filter_mode(ckpts, case, parity_report):
    """filter_mode="auto" (the default) is the tabulated path in float32, its tables checked
    at load time, within the exact tolerances of torchmd-net; exact in float64 (also after
    ``model.to(torch.float64)``) and on the reference backend."""
    z, pos, batch = molecule_batch(dtype=torch.float32)
    path = ckpts[case, 32]
    model = tnf.load_model(path)
    assert model.filter_request == "auto" and model.filter_mode == "tabulated"
    checks = [s.check for s in model.filter_tables()]
    assert len(checks) == 1 + len(model.representation_model.layers)
    assert all(c.within_fp32_rounding for c in checks), checks
    y, f = model(z, pos, batch)
    y_tab, f_tab = tnf.load_model(path, filter_mode="tabulated")(z, pos, batch)
    assert torch.equal(y, y_tab) and torch.equal(f, f_tab)
    y_tmd, f_tmd = oracle_energy_forces(load_oracle(path), z, pos, batch)
    errs = (
        assert_close(y, y_tmd, torch.float32, "energy", case),
        assert_close(f, f_tmd, torch.float32, "forces", case),
    )
    parity_report(f"cpu-auto {case}", 32, *errs)
    # float64: exact, bitwise the exact mode's numbers
    z64, pos64, _ = molecule_batch(dtype=torch.float64)
    y_exact, f_exact = tnf.load_model(path, filter_mode="exact", precision=64)(z64, pos64, batch)
    for model64 in (tnf.load_model(path, precision=64), model.to(torch.float64)):
        assert model64.filter_mode == "exact"
        y64, f64 = model64(z64, pos64, batch)
        assert torch.equal(y64, y_exact) and torch.equal(f64, f_exact)
    assert tnf.load_model(path, backend="reference").filter_mode == "exact"


def test_auto_filter_mode_falls_back_to_exact(ckpts, monkeypatch):
    """A filter the 512-interval table cannot follow (RBF widths 10x narrower: betas x 100)
    makes "auto" run the exact filters, with one warning naming the measured errors. The
    edit is in place after loading: the tables and their checks must follow the weights."""
    monkeypatch.setattr(base, "_warned", set())
    z, pos, batch = molecule_batch(dtype=torch.float32)
    path = ckpts["o3_2layers", 32]
    models = [tnf.load_model(path, filter_mode=mode) for mode in ("auto", "exact")]
    for m in models:
        with torch.no_grad():
            m.representation_model.distance_expansion.betas.mul_(100.0)
    with pytest.warns(UserWarning, match="uses the exact filters.*above the float32 rounding"):
        assert models[0].filter_mode == "exact"
    assert not all(s.check.within_fp32_rounding for s in models[0].filter_tables())
    (y, f), (y_exact, f_exact) = (m(z, pos, batch) for m in models)
    assert torch.equal(y, y_exact) and torch.equal(f, f_exact)


def test_table_check_measures_the_table(ckpts):
    """TableCheck against a table that is visibly too coarse: 16 intervals instead of 512."""
    model = tnf.load_model(ckpts["o3_2layers", 32], filter_mode="exact")
    fine = build_splines(model)
    coarse = build_splines(model, 16)
    for a, b in zip(fine, coarse):
        assert b.check.derivative_error > 100 * a.check.derivative_error
        assert b.check.value_error > 100 * a.check.value_error
        assert not b.check.within_fp32_rounding and a.check.within_fp32_rounding


@pytest.mark.parametrize("mode", FILTER_MODES)
@pytest.mark.parametrize("group", ["O(3)", "SO(3)"])
def test_gradcheck(tmp_path, mode, group):
    """Forces are the exact gradient of the same function (for tabulated: of the splines)."""
    path = make_checkpoint(
        tmp_path / "g.ckpt",
        seed=12,
        precision=64,
        embedding_dimension=8,
        num_rbf=6,
        cutoff_lower=0.5,
        equivariance_invariance_group=group,
        charge=True,
    )
    model = tnf.load_model(path, backend="cpu", filter_mode=mode, derivative=False)
    z, pos, batch = molecule_batch(("CH3OH", "H2O"), jitter=0.1)
    q = torch.tensor([1.0, -1.0], dtype=torch.float64)

    def energy(p):
        return model(z, p, batch, q=q)[0]

    assert torch.autograd.gradcheck(
        energy, (pos.clone().requires_grad_(True),), eps=1e-6, atol=1e-8, rtol=1e-6
    )


@pytest.mark.parametrize("case", ["so3_2layers", "o3_2layers"])
@pytest.mark.parametrize("mode", FILTER_MODES)
def test_compiled_kernels_match_torch_path(ckpts, mode, case):
    """The compiled path (edge kernels, fused layers with their hand-written backward, fused
    exact-filter evaluation) against the chunked torch path with autograd."""
    if compiled_ops() is None:
        pytest.skip("tensornet_fast._C not built (python setup.py build_ext --inplace)")
    z, pos, batch = molecule_batch(dtype=torch.float64)
    model = tnf.load_model(ckpts[case, 64], backend="cpu", filter_mode=mode)
    y_c, f_c = model(z, pos, batch)
    torch_path = CpuBackend(use_extension=False)
    y_t, f_t = tnf.load_model(ckpts[case, 64], backend=torch_path, filter_mode=mode)(z, pos, batch)
    assert_close(y_c, y_t, torch.float64, "energy")
    assert_close(f_c, f_t, torch.float64, "forces")


@pytest.mark.parametrize("mode", FILTER_MODES)
def test_deterministic(ckpts, mode):
    z, pos, batch = molecule_batch(dtype=torch.float32)
    model = tnf.load_model(ckpts["o3_2layers", 32], backend="cpu", filter_mode=mode)
    y1, f1 = model(z, pos, batch)
    y2, f2 = model(z, pos, batch)
    assert torch.equal(y1, y2) and torch.equal(f1, f2)


def test_backend_selection(ckpts, monkeypatch):
    path = ckpts["so3_1layer", 64]
    assert "cpu" in tnf.available_backends()
    assert tnf.load_model(path).backend == "cpu"  # auto on a CPU device
    monkeypatch.setenv("TENSORNET_FAST_BACKEND", "cpu")
    assert tnf.load_model(path).backend == "cpu"
    monkeypatch.setenv("TENSORNET_FAST_BACKEND", "reference")
    assert tnf.load_model(path).backend == "reference"
    assert tnf.load_model(path, backend="cpu").backend == "cpu"  # argument beats environment
    with pytest.raises(ValueError, match="filter_mode"):
        tnf.load_model(path, backend="cpu", filter_mode="spline")
    with pytest.raises(ValueError, match="needs a backend that has it"):
        tnf.load_model(path, backend="reference", filter_mode="tabulated")
    # auto picks per device: the cpu backend only serves CPU tensors
    monkeypatch.delenv("TENSORNET_FAST_BACKEND")
    on_cuda = "triton" if "triton" in tnf.available_backends() else "reference"
    assert tnf.resolve_backend("auto", device="cuda") == on_cuda
    assert tnf.resolve_backend("auto", device="cpu") == "cpu"


def test_training_mode_uses_reference_math(ckpts):
    """The cpu edge passes give no parameter gradients: training mode must run the reference
    math (parameter gradients flow, numbers unchanged)."""
    z, pos, batch = molecule_batch(dtype=torch.float64)
    model = tnf.load_model(ckpts["o3_2layers", 64], backend="cpu")
    y_eval, _ = model(z, pos, batch)
    model.train()
    y, _ = model(z, pos, batch)
    y.sum().backward()
    w = model.representation_model.layers[0].linears_scalar[0].weight
    assert w.grad is not None and w.grad.abs().max() > 0
    assert_close(y, y_eval, torch.float64, "energy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [7, 13, 24])  # a row tail only, tail + registers, registers
@pytest.mark.parametrize("act", [0, 2])  # SiLU, sigmoid
def test_bias_act_jvp_kernel(act, width, dtype):
    """The exact filters' fused epilogue (bias, activation, tangent; its own vectorised exp for
    float32) against torch's activation and forward-mode AD in float64, over +-100."""
    ops = compiled_ops()
    if ops is None:
        pytest.skip("tensornet_fast._C not built (python setup.py build_ext --inplace)")
    gen = torch.Generator().manual_seed(width + act)
    a = torch.randn(37, width, generator=gen, dtype=dtype) * 30
    a[0, 0], a[-1, -1] = -100.0, 100.0  # the exp's clamped range
    tangent = torch.randn(37, width, generator=gen, dtype=dtype)
    bias = torch.randn(width, generator=gen, dtype=dtype)
    fn = torch.nn.functional.silu if act == 0 else torch.sigmoid
    ref, ref_t = torch.func.jvp(fn, ((a + bias).double(),), (tangent.double(),))
    h, th = a.clone(), tangent.clone()
    ops.cpu_bias_act_jvp_(h, th, bias, act)
    bound = 1e-6 if dtype == torch.float32 else 1e-14
    assert ((h.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max() < bound
    assert (th.double() - ref_t).abs().max() / ref_t.abs().max() < 2 * bound


@pytest.mark.parametrize("degree", [3, 5])
@pytest.mark.parametrize("lower", [0.0, 1.0])
def test_spline_order(degree, lower):
    """Hermite splines (cubic, and quintic: the tables of every backend) converge at their
    order, values as h^(degree + 1) and derivatives as h^degree, up to the cutoffs: the cosine
    cutoff's second derivative jumps there, and the quintic uses its one-sided limit (fitted to
    the value outside, its last interval's derivative error fell only as h)."""
    from tensornet_fast.backends.shared.radial import cosine_cutoff

    def fn(d):
        phi = cosine_cutoff(d, lower, 5.0)
        return torch.stack((torch.sin(3 * d) * phi, torch.exp(-d) * phi), 1)

    d = torch.linspace(lower + 1e-9, 5.0 - 1e-9, 20001, dtype=torch.float64)
    ref, ref_d = torch.func.jvp(fn, (d,), (torch.ones_like(d),))
    errors = []
    for n in (32, 64):
        spline = Spline(fn, lower, 5.0, n, torch.float64, degree)
        assert spline.coef.shape == (n, degree + 1, 2)
        val, der = spline.evaluate(d, True)
        errors.append(((val - ref).abs().max(), (der - ref_d).abs().max()))
    (v32, d32), (v64, d64) = errors
    assert v32 / v64 > 0.7 * 2 ** (degree + 1), (v32, v64)
    assert d32 / d64 > 0.7 * 2**degree, (d32, d64)
    assert v64 < (2e-5 if degree == 3 else 1e-8) and d64 < (1e-3 if degree == 3 else 5e-7)


def test_spline_locate_kernel():
    """The compiled spline coordinates (cpu_spline_locate) are bitwise Spline.locate's, with
    -1 below a lower cutoff; distances below, inside, at and beyond the grid."""
    ops = compiled_ops()
    if ops is None:
        pytest.skip("tensornet_fast._C not built (python setup.py build_ext --inplace)")
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        d = torch.rand(5000, generator=gen, dtype=dtype) * 6.0
        d[:4] = torch.tensor([0.0, 0.9, 4.5, 6.0], dtype=dtype)
        spline = Spline(lambda x: x[:, None], 0.9, 4.5, 2048, dtype)
        k_ref, s_ref = spline.locate(d)
        k_ref = torch.where(d >= spline.lo, k_ref, torch.full_like(k_ref, -1))
        k, s = ops.cpu_spline_locate(d, spline.lo, spline.h, spline.n, True)
        assert torch.equal(k, k_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("activation", ["silu", "tanh", "sigmoid", "ssp", "mish"])
@pytest.mark.parametrize("rows", [5, 40])  # on the calling thread / one parallel region
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_stack_kernels(activation, rows, dtype):
    """LayerNorm + linear (+ activation) stacks (cpu_rows_fwd / cpu_rows_bwd) against torch's
    modules and autograd in float64, the last layer without activation as in the head (float32:
    the compiled GEMM and, for SiLU / sigmoid, the compiled activations)."""
    if compiled_ops() is None:
        pytest.skip("tensornet_fast._C not built (python setup.py build_ext --inplace)")
    torch.manual_seed(rows)
    norm = torch.nn.LayerNorm(12, dtype=torch.float64)
    lins = [torch.nn.Linear(a, b, dtype=torch.float64) for a, b in ((12, 16), (16, 8), (8, 1))]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        for lin in lins:  # weights of O(1) so the activations see arguments well beyond +-1
            lin.weight.mul_(3.0)
    stack = _RowStack(
        compiled_ops(),
        copy.deepcopy(norm).to(dtype),
        [(copy.deepcopy(lins[0]).to(dtype), True), (copy.deepcopy(lins[1]).to(dtype), True)]
        + [(copy.deepcopy(lins[2]).to(dtype), False)],
        activation,
    )
    act = ACTIVATION_FUNCTIONS[activation]
    x = torch.randn(rows, 12, dtype=torch.float64, requires_grad=True)
    ref = lins[2](act(lins[1](act(lins[0](norm(x))))))
    g = torch.randn_like(ref)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    out, tape = stack.forward(x.detach().to(dtype))
    # the head's output is an energy, the input gradient a force-like quantity
    assert_close(out.double(), ref.detach(), dtype, "energy", "row stack output")
    gx = stack.backward(g.to(dtype), tape)
    assert_close(gx.double(), gx_ref, dtype, "forces", "row stack gradient")


@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13, 40])  # 6-row tiles and their tails; 40: 2 threads
def test_packed_gemm_kernel(rows):
    """The hand-written float32 GEMM (weights packed by cpu_gemm_pack) against float64 GEMMs:
    the embedding combine (9 channel GEMMs per atom, F=80: five 16-column panels, with AVX-512 a
    4-panel tile and a 1-panel one) forward and backward, and a row stack 48 -> 32 -> 16 -> 1
    (bias epilogue, K != N, K = 1 backward; 2-panel tiles and 2 + 1)."""
    ops = compiled_ops()
    if ops is None:
        pytest.skip("tensornet_fast._C not built (python setup.py build_ext --inplace)")
    gen = torch.Generator().manual_seed(rows)
    nf = 80
    w = torch.randn(3, nf, nf, generator=gen) / nf**0.5
    fwd, bwd = ops.cpu_gemm_pack(w, True), ops.cpu_gemm_pack(w, False)
    if fwd.numel() == 0:
        pytest.skip("built without AVX2/FMA: the ops use BLAS")
    assert fwd.shape == bwd.shape == (3, 5, nf, 16)
    assert ops.cpu_gemm_pack(w.double(), True).numel() == 0  # float64: BLAS
    assert ops.cpu_gemm_pack(w[:, :24], True).numel() == 0  # 24 outputs: not 16-column panels
    raw, norm = torch.randn(rows, 9, nf, generator=gen), torch.randn(rows, 3 * nf, generator=gen)
    gx = torch.randn(rows, 9, nf, generator=gen)
    wk = w.double()[[0, 1, 1, 1, 2, 2, 2, 2, 2]]  # [9, F, F] per component
    x, p = ops.cpu_embed_combine_fwd(raw, norm, w, fwd)
    assert_close(p, torch.einsum("nki,koi->nko", raw.double(), wk), torch.float32, "energy")
    graw, _ = ops.cpu_embed_combine_bwd(gx, p, norm, w, bwd)
    gp = gx.double() * norm.double().view(rows, 3, nf)[:, [0, 1, 1, 1, 2, 2, 2, 2, 2]]
    assert_close(graw, torch.einsum("nko,koi->nki", gp, wk), torch.float32, "forces")

    norm64 = torch.nn.LayerNorm(48, dtype=torch.float64)
    lins = [torch.nn.Linear(a, b, dtype=torch.float64) for a, b in ((48, 32), (32, 16), (16, 1))]
    layers = [(lin.float(), k < 2) for k, lin in enumerate(copy.deepcopy(lins))]
    stack = _RowStack(ops, copy.deepcopy(norm64).float(), layers, "silu")
    assert [t.numel() > 0 for t in stack.packed_fwd] == [True, True, False]
    assert all(t.numel() > 0 for t in stack.packed_bwd)
    x64 = torch.randn(rows, 48, dtype=torch.float64, requires_grad=True)
    act = torch.nn.functional.silu
    ref = lins[2](act(lins[1](act(lins[0](norm64(x64))))))
    g = torch.randn_like(ref)
    (gx_ref,) = torch.autograd.grad(ref, x64, g)
    out, tape = stack.forward(x64.detach().float())
    assert_close(out, ref.detach(), torch.float32, "energy", "row stack output")
    assert_close(stack.backward(g.float(), tape), gx_ref, torch.float32, "forces", "gradient")


def test_threads_agree(tmp_path):
    """The fused layers split atoms over threads (one parallel region, a barrier before each
    message pass): 1 and 2 threads give the same energy and forces (81 atoms, float64)."""
    path = make_checkpoint(tmp_path / "t.ckpt", seed=9, precision=64, cutoff_upper=4.5, **SMALL)
    z, pos, box = water_box(3, spacing=3.25, seed=5, dtype=torch.float64)
    model = tnf.load_model(path, backend="cpu", filter_mode="tabulated")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, f1 = model(z, pos, box=box)
        torch.set_num_threads(2)
        y2, f2 = model(z, pos, box=box)
    finally:
        torch.set_num_threads(threads)
    assert_close(y2, y1, torch.float64, "energy")
    assert_close(f2, f1, torch.float64, "forces")


def test_no_reference_cycles(ckpts):
    """A call leaves no cyclic garbage: the fused path's tapes hold no reference to the
    Function's own output (that cycle kept every call's tensors alive until the cyclic GC)."""
    import gc

    z, pos, batch = molecule_batch(dtype=torch.float32)
    model = tnf.load_model(ckpts["o3_2layers", 32], backend="cpu", filter_mode="tabulated")
    model(z, pos, batch)
    gc.collect()
    gc.disable()
    try:
        y, f = model(z, pos, batch)
        del y, f
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_positions_requiring_grad(ckpts):
    """pos.requires_grad: energies differentiate through the cpu backend's own backward (same
    forces); a second derivative raises InputError naming the fix; the reference backend gives
    the Hessian, which matches finite differences of its forces."""
    z, pos, batch = molecule_batch(("H2O",), dtype=torch.float64)
    path = ckpts["o3_2layers", 64]
    model = tnf.load_model(path, backend="cpu")
    leaf = pos.clone().requires_grad_(True)
    energy, forces = model(z, leaf, batch)
    (grad,) = torch.autograd.grad(energy.sum(), leaf, retain_graph=True)
    assert torch.allclose(-grad, forces.detach(), rtol=0, atol=1e-12)
    with pytest.raises(tnf.InputError, match="backend='reference' for Hessians"):
        torch.autograd.grad(forces.sum(), leaf)
    ref = tnf.load_model(path, backend="reference")
    hessian = torch.autograd.functional.hessian(lambda p: ref(z, p, batch)[0].sum(), pos)
    step = 1e-5
    for atom, axis in ((0, 0), (2, 1)):
        dp = torch.zeros_like(pos)
        dp[atom, axis] = step
        fd = -(ref(z, pos + dp, batch)[1] - ref(z, pos - dp, batch)[1]) / (2 * step)
        assert torch.allclose(hessian[atom, axis], fd, rtol=0, atol=1e-6 * fd.abs().max())


DIRECT_CASES = {
    "o3_2layers": {},
    "charge": {"charge": True},
    "atomref_standardize": {"prior_model": {"Atomref": {"max_z": 20}}, "standardize": True},
    "reduce_mean": {"reduce_op": "mean", "standardize": True},
}


@pytest.mark.parametrize("mode", FILTER_MODES)
@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_forces_match_autograd_and_reference(tmp_path, case, mode, monkeypatch):
    """Energy + forces without an autograd graph (backend.atomic_energies_vjp, assembly's
    direct branch) give the same bits as autograd through the fused node, and match the float64
    reference backend within the float32 tolerances (exact filters; tabulated: the fast-mode
    factor). Unsorted batch (the assembly's reordering), charges, atom energies and a periodic
    box included; stress keeps the autograd branch."""
    hp = DIRECT_CASES[case]
    std = dict(mean=-2.5, std=1.7) if hp.get("standardize") else {}
    # seed 7: molecular energies of order 1 (seed 11's reach 0.33, where float32 rounding alone,
    # also the reference backend's, is 3e-6 relative to max |E|)
    path = make_checkpoint(tmp_path / "m.ckpt", seed=7, precision=32, **{**SMALL, **hp}, **std)
    z, pos, batch = molecule_batch(dtype=torch.float64)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(3))
    z, pos, batch = z[perm], pos[perm], batch[perm]
    wz, wpos, box = water_box(2, spacing=3.25, seed=4, dtype=torch.float64)
    q = Q if hp.get("charge") else None
    inputs = [
        dict(z=z, pos=pos, batch=batch, q=q),
        dict(z=wz, pos=wpos, box=box, q=q[:1] if q is not None else None),
    ]
    model = tnf.load_model(path, backend="cpu", filter_mode=mode)
    ref = tnf.load_model(path, backend="reference", precision=64)
    calls = []
    direct_vjp = CpuBackend.atomic_energies_vjp
    monkeypatch.setattr(
        CpuBackend, "atomic_energies_vjp", lambda *a: calls.append(1) or direct_vjp(*a)
    )
    for kw in inputs:
        kw32 = dict(kw, pos=kw["pos"].float(), box=kw.get("box"))
        if kw32["box"] is not None:
            kw32["box"] = kw32["box"].float()
        direct = model.compute(**kw32, atom_energies=True)
        assert direct["forces"].grad_fn is None and direct["energy"].grad_fn is None
        with monkeypatch.context() as m:
            m.setattr(CpuBackend, "direct_forces", lambda self, model: False)
            graph = model.compute(**kw32, atom_energies=True)
        for key in ("energy", "forces", "atom_energies"):
            assert torch.equal(direct[key], graph[key]), key
        expected = ref.compute(**kw, atom_energies=True)
        factor = 1.0 if mode == "exact" else FAST_MODE_FACTOR
        for key, kind in (("energy", "energy"), ("forces", "forces")):
            err = relative_error(direct[key], expected[key])
            tol = TOLERANCES[torch.float32][kind] * factor
            assert err <= tol, f"{case} {mode} {key}: {err:.2e} > {tol:.0e}"
    assert len(calls) == len(inputs)
    # stress needs the strain's gradient: the autograd branch, same forces
    kw32 = dict(inputs[1], pos=wpos.float(), box=box.float())
    with_stress = model.compute(**kw32, stress=True)
    assert len(calls) == len(inputs)
    assert_close(with_stress["forces"], model.compute(**kw32)["forces"], torch.float32, "forces")
