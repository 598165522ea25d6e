"""Every Triton op against its PyTorch reference (kernels/reference.py): forward, backward,
``torch.library.opcheck`` and fp64 gradcheck.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` on CPU tensors (set by conftest.py
before Triton is imported); in the GPU lane (TNF_GPU_LANE=1) the same tests run on CUDA.
Sizes are small (tens of atoms, F = 16..24) so the interpreter lane stays within a minute or two.
"""

from __future__ import annotations

import pytest
import torch
from oracle import make_checkpoint

import tensornet_fast as tnf
from tensornet_fast.backends.triton import backend as triton_backend

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton", reason="the triton extra is part of the test install")

from tensornet_fast.kernels import edge_passes, tensor_products  # noqa: E402
from tensornet_fast.kernels.radial_filter import FilterWeights, radial_filter  # noqa: E402
from tensornet_fast.kernels.reference import (  # noqa: E402
    embed_ref,
    message_ref,
    product_ref,
    radial_filter_ref,
    update_ref,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {32: torch.float32, 64: torch.float64}
# Kernel vs reference: the same math in a different order, so a few float roundings apart.
OP_RTOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _assert_rel(a, b, dtype, what):
    err = _rel(a, b)
    assert err <= OP_RTOL[dtype], f"{what}: relative error {err:.2e} > {OP_RTOL[dtype]:.0e}"


FILTER_CASES = {
    "expnorm_silu": {},
    "gauss_tanh": {"rbf_type": "gauss", "activation": "tanh"},
    "lower_cutoff_ssp": {"cutoff_lower": 0.9, "activation": "ssp"},
    "sigmoid": {"activation": "sigmoid"},
    "mish": {"activation": "mish"},
}


def _model(tmp_path, precision, **hp):
    path = make_checkpoint(
        tmp_path / f"k_{precision}.ckpt",
        seed=11,
        precision=precision,
        embedding_dimension=24,
        num_rbf=8,
        **hp,
    )
    return tnf.load_model(path, backend="triton", device=DEVICE)


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", FILTER_CASES)
def test_radial_filter_values_and_derivatives(tmp_path, case, precision):
    model = _model(tmp_path, precision, **FILTER_CASES[case])
    rep, config = model.representation_model, model.config
    d = torch.linspace(0.0, config.cutoff_upper * 1.02, 53, dtype=model.dtype, device=DEVICE)
    for layer in [None, *rep.layers]:
        w = FilterWeights(rep, layer, config, model.dtype, DEVICE)
        val, der = radial_filter(d, w, deriv=True)
        dd = d.clone().requires_grad_(True)
        ref = radial_filter_ref(rep, layer, config, dd)
        # d/dd of each output column: one backward per column is slow; use forward mode.
        _, ref_der = torch.func.jvp(
            lambda x, lay=layer: radial_filter_ref(rep, lay, config, x), (d,), (torch.ones_like(d),)
        )
        _assert_rel(val, ref, model.dtype, f"{case} filter values")
        _assert_rel(der, ref_der, model.dtype, f"{case} filter derivatives")
        assert ref.abs().max() > 1e-3 and ref_der.abs().max() > 1e-3


def _graph(dtype, n=14, cutoff=3.0, seed=0):
    """A small symmetric radius graph with self-loops (2 molecules)."""
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 4.0).to(dtype)
    batch = torch.tensor([0] * (n // 2) + [1] * (n - n // 2))
    nl = tnf.radius_graph_full(pos, cutoff, batch=batch, loop=True)
    return nl, pos


def _edge_setup(tmp_path, precision, tabulated, **hp):
    model = _model(tmp_path, precision, **hp)
    if tabulated:
        model.filter_mode = "tabulated"
    nl, _ = _graph(model.dtype)
    to = dict(device=DEVICE)
    row_ptr = nl.row_ptr.to(**to)
    row, col = nl.edge_index[0].to(**to).contiguous(), nl.edge_index[1].to(**to).contiguous()
    d = nl.edge_dist.to(**to)
    return model, row_ptr, row, col, d


def _filter_args(model, d, k):
    """(kernel args, differentiable reference f(d) [E, 3F]) for radial filter k."""
    filters = triton_backend._Filters(model, d, deriv=True)
    rep, config = model.representation_model, model.config
    layer = None if k == 0 else rep.layers[k - 1]
    if model.filter_mode == "tabulated":
        coef, lo, inv_h = triton_backend.splines(model)[k]

        def ref(dd):  # the same spline in torch (differentiable in d through s)
            t = (dd.double() - lo) * inv_h
            kk = t.detach().floor().clamp(0, coef.shape[0] - 1)
            s = (t - kk).clamp(0.0, 1.0).to(dd.dtype)[:, None]
            c = coef[kk.long()]
            val = c[:, 5]
            for p in range(4, -1, -1):  # Horner, degree 5
                val = val * s + c[:, p]
            return val * (dd >= lo).to(dd.dtype)[:, None]

        return filters.args[k], ref
    return filters.args[k], lambda dd: radial_filter_ref(rep, layer, config, dd)


@pytest.mark.parametrize("tabulated", [False, True], ids=["exact", "tabulated"])
@pytest.mark.parametrize("precision", DTYPES)
def test_message_forward_backward(tmp_path, precision, tabulated):
    model, row_ptr, row, col, d = _edge_setup(tmp_path, precision, tabulated)
    dtype, n, f = model.dtype, row_ptr.shape[0] - 1, model.config.embedding_dimension
    (tab, dtab, idx, lo, inv_h, tab_mode), ref_fn = _filter_args(model, d, 1)
    g = torch.Generator().manual_seed(1)
    y = torch.randn(n, 9, f, generator=g, dtype=dtype).to(DEVICE).requires_grad_(True)
    dd = d.clone().requires_grad_(True)
    out = edge_passes.message(y, dd, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tab_mode)
    y2, d2 = y.detach().clone().requires_grad_(True), d.clone().requires_grad_(True)
    ref = message_ref(y2, ref_fn(d2), row, col)
    _assert_rel(out, ref, dtype, "message forward")
    gm = torch.randn(out.shape, generator=g, dtype=dtype).to(DEVICE)
    gy, gd = torch.autograd.grad(out, (y, dd), gm)
    ry, rd = torch.autograd.grad(ref, (y2, d2), gm)
    _assert_rel(gy, ry, dtype, "message dE/dY")
    # self-loops (d = 0) carry no distance gradient in the model; compare real edges
    real = d > 0
    _assert_rel(gd[real], rd[real], dtype, "message dE/dd")


@pytest.mark.parametrize("tabulated", [False, True], ids=["exact", "tabulated"])
@pytest.mark.parametrize("precision", DTYPES)
def test_embed_forward_backward(tmp_path, precision, tabulated):
    model, row_ptr, row, col, d = _edge_setup(tmp_path, precision, tabulated, cutoff_lower=0.4)
    dtype, n, f = model.dtype, row_ptr.shape[0] - 1, model.config.embedding_dimension
    (tab, dtab, idx, lo, inv_h, tab_mode), ref_fn = _filter_args(model, d, 0)
    g = torch.Generator().manual_seed(2)
    e = d.shape[0]
    geo = torch.randn(e, 9, generator=g, dtype=dtype).to(DEVICE).requires_grad_(True)
    ztab = torch.randn(5, f, generator=g, dtype=dtype).to(DEVICE)
    pair = torch.randint(0, 5, (e,), generator=g).to(DEVICE)
    dd = d.clone().requires_grad_(True)
    out = edge_passes.embed(geo, dd, pair, ztab, row_ptr, row, tab, dtab, idx, lo, inv_h, tab_mode)
    geo2, d2 = geo.detach().clone().requires_grad_(True), d.clone().requires_grad_(True)
    ref = embed_ref(geo2, ref_fn(d2), ztab[pair], row, n)
    _assert_rel(out, ref, dtype, "embed forward")
    gr = torch.randn(out.shape, generator=g, dtype=dtype).to(DEVICE)
    ggeo, gd = torch.autograd.grad(out, (geo, dd), gr)
    rgeo, rd = torch.autograd.grad(ref, (geo2, d2), gr)
    _assert_rel(ggeo, rgeo, dtype, "embed dE/dgeo")
    real = d > 0
    _assert_rel(gd[real], rd[real], dtype, "embed dE/dd")


def _node_inputs(dtype, n=21, f=20, seed=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 9, f, generator=g, dtype=dtype).to(DEVICE)
    m = torch.randn(n, 9, f, generator=g, dtype=dtype).to(DEVICE)
    q = (1 + 0.1 * torch.randint(-10, 3, (n,), generator=g)).to(dtype).to(DEVICE)  # incl. 0
    return y, m, q


@pytest.mark.parametrize("o3", [True, False], ids=["O3", "SO3"])
@pytest.mark.parametrize("precision", DTYPES)
def test_product_forward_backward(precision, o3):
    dtype = DTYPES[precision]
    y, m, q = _node_inputs(dtype)
    y1, m1 = y.clone().requires_grad_(True), m.clone().requires_grad_(True)
    y2, m2 = y.clone().requires_grad_(True), m.clone().requires_grad_(True)
    out = tensor_products.product(y1, m1, q, o3)
    ref = product_ref(y2, m2, q, o3)
    _assert_rel(out, ref, dtype, "product forward")
    g = torch.randn_like(out)
    for a, b, what in zip(
        torch.autograd.grad(out, (y1, m1), g), torch.autograd.grad(ref, (y2, m2), g), "YM"
    ):
        _assert_rel(a, b, dtype, f"product dE/d{what}")


@pytest.mark.parametrize("precision", DTYPES)
def test_update_forward_backward(precision):
    dtype = DTYPES[precision]
    x, dx, q = _node_inputs(dtype, seed=4)
    x1, dx1 = x.clone().requires_grad_(True), dx.clone().requires_grad_(True)
    x2, dx2 = x.clone().requires_grad_(True), dx.clone().requires_grad_(True)
    out = tensor_products.update(x1, dx1, q)
    ref = update_ref(x2, dx2, q)
    _assert_rel(out, ref, dtype, "update forward")
    g = torch.randn_like(out)
    for a, b, what in zip(
        torch.autograd.grad(out, (x1, dx1), g), torch.autograd.grad(ref, (x2, dx2), g), "XD"
    ):
        _assert_rel(a, b, dtype, f"update dE/d{what}")


def test_gradcheck_float64(tmp_path):
    """fp64 gradcheck of every differentiable op (finite differences, not the reference).
    fast_mode checks random directional derivatives: 2 evaluations per check instead of two per
    input element, which the interpreter could not afford."""
    dtype = torch.float64
    y, m, q = _node_inputs(dtype, n=3, f=5, seed=5)
    y.requires_grad_(True), m.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: tensor_products.product(a, b, q, True), (y, m), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda a, b: tensor_products.product(a, b, q, False), (y, m), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda a, b: tensor_products.update(a, b, q), (y, m), fast_mode=True
    )

    model, row_ptr, row, col, d = _edge_setup(tmp_path, 64, tabulated=False)
    n, f = row_ptr.shape[0] - 1, model.config.embedding_dimension
    (tab, dtab, idx, lo, inv_h, tab_mode), _ = _filter_args(model, d, 1)
    # In exact mode the filter table is evaluated at the given distances, so perturbing d by
    # finite differences moves off the table rows: check dE/dY by gradcheck and dE/dd in the
    # tabulated mode below, where the filter is a function of d inside the kernel.
    yy = torch.randn(n, 9, f, dtype=dtype, device=DEVICE).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a: edge_passes.message(a, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, False),
        (yy,),
        fast_mode=True,
    )
    model.filter_mode = "tabulated"
    (tab, dtab, idx, lo, inv_h, _), _ = _filter_args(model, d, 1)
    real = d > 0  # self-loops: d = 0 is a kink of |r|, no force flows there
    dd = d.clone().requires_grad_(True)

    def msg_d(x):
        full = torch.where(real, x, torch.zeros_like(x))
        return edge_passes.message(yy.detach(), full, row_ptr, row, col, tab, dtab, idx, lo,
                                   inv_h, True)  # fmt: skip

    assert torch.autograd.gradcheck(msg_d, (dd,), atol=1e-6, fast_mode=True)
    ztab = torch.randn(4, f, dtype=dtype, device=DEVICE)
    pair = torch.randint(0, 4, (d.shape[0],), device=DEVICE)
    geo = torch.randn(d.shape[0], 9, dtype=dtype, device=DEVICE).requires_grad_(True)

    def emb(x, gg):
        full = torch.where(real, x, torch.zeros_like(x))
        return edge_passes.embed(gg, full, pair, ztab, row_ptr, row, tab, dtab, idx, lo, inv_h,
                                 True)  # fmt: skip

    assert torch.autograd.gradcheck(emb, (dd, geo), atol=1e-6, fast_mode=True)


def test_opcheck_every_op(tmp_path):
    """Schema, fake implementation, autograd registration and AOT dispatch of each custom op."""
    dtype = torch.float64
    y, m, q = _node_inputs(dtype, n=4, f=6, seed=6)
    g = torch.randn_like(y)
    torch.library.opcheck(tensor_products.product, (y.requires_grad_(True), m, q, True))
    torch.library.opcheck(tensor_products.product_backward, (y.detach(), m, q, g, False))
    torch.library.opcheck(tensor_products.update, (y.detach().requires_grad_(True), m, q))
    torch.library.opcheck(tensor_products.update_backward, (m, q, g))
    model, row_ptr, row, col, d = _edge_setup(tmp_path, 64, tabulated=True)
    n, f, e = row_ptr.shape[0] - 1, model.config.embedding_dimension, d.shape[0]
    (tab, dtab, idx, lo, inv_h, tab_mode), _ = _filter_args(model, d, 1)
    yy = torch.randn(n, 9, f, dtype=dtype, device=DEVICE, requires_grad=True)
    margs = (yy, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tab_mode)
    torch.library.opcheck(edge_passes.message, margs)
    torch.library.opcheck(
        edge_passes.message_backward,
        (yy.detach(), torch.randn_like(yy), d, row, col, tab, dtab, idx, lo, inv_h, tab_mode),
    )
    geo = torch.randn(e, 9, dtype=dtype, device=DEVICE, requires_grad=True)
    ztab = torch.randn(3, f, dtype=dtype, device=DEVICE)
    pair = torch.randint(0, 3, (e,), device=DEVICE)
    eargs = (geo, d, pair, ztab, row_ptr, row, tab, dtab, idx, lo, inv_h, tab_mode)
    torch.library.opcheck(edge_passes.embed, eargs)
    torch.library.opcheck(
        edge_passes.embed_backward,
        (torch.randn(n, 9, f, dtype=dtype, device=DEVICE), geo.detach(), d, pair, ztab, row,
         tab, dtab, idx, lo, inv_h, tab_mode),
    )  # fmt: skip


def test_bad_inputs_raise_clear_errors(tmp_path):
    y, m, q = _node_inputs(torch.float64, n=4, f=6)
    with pytest.raises(ValueError, match=r"\[N, 9, F\]"):
        tensor_products.product(y[:, :8], m[:, :8], q, True)
    with pytest.raises(ValueError, match="differ"):
        tensor_products.update(y, m.float(), q)
    with pytest.raises(ValueError, match="charge factor"):
        tensor_products.update(y, m, q[:2])
    model = _model(tmp_path, 64)
    w = FilterWeights(model.representation_model, None, model.config, torch.float64, DEVICE)
    with pytest.raises(ValueError, match="1-D"):
        radial_filter(torch.zeros(2, 2, dtype=torch.float64, device=DEVICE), w, False)
    with pytest.raises(ValueError, match="float32"):
        radial_filter(torch.zeros(3, device=DEVICE), w, False)
