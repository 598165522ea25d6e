"""The fast CPU backend (``backend="cpu"``): the same numbers as ``reference.py``, restructured.

Levers (SPEC.md "Where the cost is"):

* Every 3x3 tensor is 9 coefficients in an ORTHONORMAL basis of 3x3 matrices (Frobenius):
  component 0 = Id/sqrt3 (the I part), 1..3 = skew(e_k)/sqrt2 (A), 4..8 = symmetric traceless
  (S). So ||X||^2 = sum of squares of the 9 numbers, the I/A/S split is a slice, and a channel
  linear is one GEMM per block on [N * k, F]. Nothing is stored 3x3 with redundancy.
* The radial filters depend on d alone. ``exact`` mode evaluates the MLP (and its d-derivative,
  forward-mode) once per DISTINCT distance: d_ij == d_ji bitwise (edge_vec of the reverse edge
  is the exact negation), so this is at most one evaluation per unordered pair. ``tabulated``
  mode replaces each filter by a quintic Hermite spline in d built once from the exact values
  and first and second derivatives; forces use the spline's own derivative, so energy is
  conserved.
* Messages are segment reductions over edges sorted by receiver; per-edge tensors exist only
  for a chunk of ``EDGE_CHUNK`` edges (torch path) or in registers (C++ path, csrc/).
* Forces: a hand-written backward for the two edge passes (embedding, messages). It contracts
  the receiver's adjoint with the sender's features into dE/dd per edge (SPEC.md "The shape of
  the force backward"). With the compiled extension the whole model from edge_vec to the
  atomic energies is ONE autograd node (``_FusedModel``) with a hand-written backward: the edge
  passes, one op per interaction layer (normalisation, channel-linear GEMMs, message pass, 3x3
  products, residual; one parallel region with one barrier per direction), the embedding's
  combine step, the squared norms, and the per-atom LayerNorm + MLP stacks of the embedding
  and the output head (``_RowStack``: aten's kernels and backward formulas on each thread's
  rows). Without the extension everything node-level goes through autograd.
* Exact filters: value and d-derivative propagated together through the filter MLP
  (``_fused_filter_eval``); the RBF and cutoff derivatives are written out.

``filter_mode`` ("exact" | "tabulated") is chosen in ``load_model(..., filter_mode=...)``;
its default "auto" is "tabulated" for float32 models whose tables pass ``TableCheck`` (measured
at load time: no error above the float32 rounding of the exact filter), else "exact".
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.profiler import record_function

from ... import _extension
from ...model.config import ModelConfig
from ..reference.math import radial_basis, radial_filter, scalar_head
from ..shared.radial import ACTIVATION_FUNCTIONS, cosine_cutoff

FILTER_MODES = ("exact", "tabulated")
# Edges per chunk in the torch path: 4096 * 9 * F(128) * 4 B = 19 MB per temporary.
EDGE_CHUNK = 4096
# Cubic spline intervals on [cutoff_lower, cutoff_upper] (the triton backend's tables). Cubic
# Hermite error ~ h^4 (values), h^3 (derivatives). Measured on F=32/64 random-weight models
# (tests/test_cpu_backend.py, r_c = 5, h = 2.4e-3 A): the table alone (float64 tabulated vs
# float64 exact) is off by ~4e-11 relative in energy and 3e-8..1.3e-7 in forces, far below
# float32 rounding (exact fp32 vs fp64: ~1e-6 energy, 1e-6..5e-6 forces); 1024 intervals gave
# 5e-7 in forces, too close to it.
TABLE_INTERVALS = 2048
# The cpu backend's tables: quintic Hermite splines (values, first and second derivatives at the
# nodes; error ~ h^6 values, h^5 derivatives) on 512 intervals. Filters of the benchmark
# checkpoint (F=128, r_c = 5), float64, max error relative to max|f| and max|f'|: values
# <= 2e-8 / derivatives <= 8e-7 below 0.6 A, <= 1e-9 / 6e-8 beyond; the cubic at 2048 intervals:
# 4e-8 / 5e-6 and 5e-9 / 9e-7. The table is 4.7 MB per filter instead of 12.6 MB and stays in
# the L3 cache: the message passes read 6 KB (cubic) or 9 KB (quintic) of it per edge.
CPU_TABLE_DEGREE = 5
CPU_TABLE_INTERVALS = 512
# Distances per block when evaluating the exact filter MLP (bounds its [U, 3F] temporaries).
FILTER_CHUNK = 8192

# Activation ids of csrc/cpu_tensornet.cpp (the row-wise stacks take all of them,
# cpu_bias_act_jvp_ the SiLU and sigmoid ones).
_ACTIVATION_IDS = {"silu": 0, "swish": 0, "tanh": 1, "sigmoid": 2, "ssp": 3, "mish": 4}

_S2 = math.sqrt(2.0)
_S3 = math.sqrt(3.0)
_S6 = math.sqrt(6.0)
# component -> I/A/S block, for expanding a [.., 3, F] filter to the 9 components.
_BLOCK = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2])


def _basis() -> Tensor:
    """The 9 orthonormal basis matrices [9, 3, 3] (float64)."""
    b = torch.zeros(9, 3, 3, dtype=torch.float64)
    b[0] = torch.eye(3, dtype=torch.float64) / _S3
    for k, (r, c) in enumerate(((2, 1), (0, 2), (1, 0))):  # skew(e_k): +1 at (r, c), -1 at (c, r)
        b[1 + k, r, c], b[1 + k, c, r] = 1 / _S2, -1 / _S2
    for k, (r, c) in enumerate(((0, 1), (0, 2), (1, 2))):
        b[4 + k, r, c] = b[4 + k, c, r] = 1 / _S2
    b[7, 0, 0], b[7, 1, 1] = 1 / _S2, -1 / _S2
    b[8, 0, 0], b[8, 1, 1], b[8, 2, 2] = 1 / _S6, 1 / _S6, -2 / _S6
    return b


_BASIS64 = _basis()


def to_full(x: Tensor) -> Tensor:
    """[N, 9, F] coefficients -> [N, 3, 3, F] matrices: one batched [9, 9] @ [9, F] product
    (no permuted copies, which einsum made and which cost more than the arithmetic here)."""
    n, _, f = x.shape
    return torch.matmul(_BASIS64.reshape(9, 9).t().to(x.dtype), x).view(n, 3, 3, f)


def from_full(m: Tensor) -> Tensor:
    """[N, 3, 3, F] -> [N, 9, F] (projection; exact for any matrix, the basis is complete)."""
    n, f = m.shape[0], m.shape[-1]
    return torch.matmul(_BASIS64.reshape(9, 9).to(m.dtype), m.reshape(n, 9, f))


def _matmul3(a: Tensor, b: Tensor) -> Tensor:
    """Per atom and channel 3x3 product in the full layout [N, 3, 3, F]: three rank-1 updates
    (no [N, 3, 3, 3, F] temporary)."""
    out = a[:, :, 0:1] * b[:, None, 0]
    out = out + a[:, :, 1:2] * b[:, None, 1]
    return out + a[:, :, 2:3] * b[:, None, 2]


def block_linear(x: Tensor, w0: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """Channel linears per block: I by w0, A by w1, S by w2; each a GEMM on [N * k, F]."""
    return torch.cat((x[:, :1] @ w0.t(), x[:, 1:4] @ w1.t(), x[:, 4:] @ w2.t()), 1)


def sq_norm(x: Tensor) -> Tensor:
    """||X||^2 per channel = 3 I^2 + ||A||^2 + ||S||^2 (orthonormal basis).  [N, 9, F] -> [N, F]"""
    return (x * x).sum(1)


# ----------------------------------------------------------------------------- radial filters
def _embedding_filter_fn(rep, config: ModelConfig):
    """d [U] -> [U, 3F]: (distance_proj{1,2,3}(e(d))) * phi(d), blocked I | A | S."""
    emb = rep.tensor_embedding

    def fn(d: Tensor) -> Tensor:
        rbf = radial_basis(rep, config, d)
        phi = cosine_cutoff(d, config.cutoff_lower, config.cutoff_upper)[:, None]
        w = torch.cat(
            [emb.distance_proj1.weight, emb.distance_proj2.weight, emb.distance_proj3.weight]
        )
        b = torch.cat([emb.distance_proj1.bias, emb.distance_proj2.bias, emb.distance_proj3.bias])
        return F.linear(rbf, w, b) * phi

    return fn


def _layer_filter_fn(rep, layer, config: ModelConfig):
    """d [U] -> [U, 3F]: the interaction layer's filter h(d) (phi included)."""

    def fn(d: Tensor) -> Tensor:
        rbf = radial_basis(rep, config, d)
        phi = cosine_cutoff(d, config.cutoff_lower, config.cutoff_upper)
        return radial_filter(layer, config, rbf, phi)

    return fn


def filter_fns(rep, config: ModelConfig) -> list:
    """Every radial filter of ``rep`` as a function d [U] -> [U, 3F]: the embedding's, then
    each interaction layer's (the order of the tables and of the kernels' filter arguments)."""
    return [_embedding_filter_fn(rep, config)] + [
        _layer_filter_fn(rep, layer, config) for layer in rep.layers
    ]


def _value_and_derivative(fn, d: Tensor, deriv: bool) -> tuple[Tensor, Tensor | None]:
    """fn(d) and dfn/dd by forward-mode AD (one extra pass of the same GEMMs), in blocks."""
    vals, ders = [], []
    with torch.no_grad():
        for s in range(0, d.shape[0], FILTER_CHUNK):
            dc = d[s : s + FILTER_CHUNK]
            if deriv:
                v, t = torch.func.jvp(fn, (dc,), (torch.ones_like(dc),))
                ders.append(t)
            else:
                v = fn(dc)
            vals.append(v)
    return torch.cat(vals), (torch.cat(ders) if deriv else None)


def _node_derivatives(fn, d: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """fn(d), dfn/dd and (second: d2fn/dd2) by nested forward-mode AD, for spline nodes
    (a few thousand distances at most, one block)."""
    one = torch.ones_like(d)

    def first(x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(fn, (x,), (one,))

    # Grad mode on: under no_grad, F.silu's nested forward AD goes through aten::silu_backward,
    # which has no forward derivative (NotImplementedError, torch 2.13).
    with torch.enable_grad():
        if not second:
            y, d1 = first(d)
            return y.detach(), d1.detach(), None
        (y, d1), (_, d2) = torch.func.jvp(first, (d,), (one,))
    return y.detach(), d1.detach(), d2.detach()


def _cutoff_and_derivative(d: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """phi(d) (ops.radial.cosine_cutoff) and dphi/dd, written out (no forward-mode AD)."""
    phi = cosine_cutoff(d, lo, hi)
    if lo > 0:
        scale = 2.0 / (hi - lo)
        x = scale * (d - lo) + 1.0
        inside = ((d < hi) & (d > lo)).to(d.dtype)
    else:
        scale = 1.0 / hi
        x = d * scale
        inside = (d < hi).to(d.dtype)
    return phi, -0.5 * math.pi * scale * torch.sin(math.pi * x) * inside


def _radial_jvp(rep, config: ModelConfig, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """e(d) [U, K], de/dd, phi(d) [U, 1], dphi/dd: the derivatives of ops.radial's expnorm /
    gauss RBF and cosine cutoff written out (forward-mode AD through torch.func costs a
    ~150 MB lazy import and many small ops)."""
    lo, hi = config.cutoff_lower, config.cutoff_upper
    phi, dphi = _cutoff_and_derivative(d, lo, hi)
    rbf = rep.distance_expansion
    dd = d[:, None]
    if config.rbf_type == "expnorm":
        alpha = 5.0 / (hi - lo)
        env, denv = _cutoff_and_derivative(dd, 0.0, hi)
        u = torch.exp(alpha * (lo - dd))
        g = torch.exp(-rbf.betas * (u - rbf.means) ** 2)
        e = env * g
        de = g * (denv + env * (2.0 * alpha) * rbf.betas * u * (u - rbf.means))
    else:
        diff = dd - rbf.offset
        e = torch.exp(rbf.coeff * diff**2)
        de = 2.0 * rbf.coeff * diff * e
    return e, de, phi[:, None], dphi[:, None]


def _fused_filter_eval(rep, config: ModelConfig, layer=None):
    """(d [U], deriv) -> (f [U, 3F], df/dd or None) for the embedding filter (layer None) or a
    layer's filter MLP: value and tangent propagated together through the same linears, so
    each activation is evaluated once and its derivative reuses it; the tangent's GEMMs are
    the only extra work. Outputs are written in place block by block (FILTER_CHUNK rows)."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    if layer is None:
        emb = rep.tensor_embedding
        projs = (emb.distance_proj1, emb.distance_proj2, emb.distance_proj3)
        w = torch.cat([p.weight for p in projs]).detach()
        b = torch.cat([p.bias for p in projs]).detach()
        lins = [(w, b, False)]
    else:
        lins = [(lin.weight.detach(), lin.bias.detach(), True) for lin in layer.linears_scalar]

    # compiled value+tangent activations: bias + SiLU/sigmoid + tangent in one pass
    # (csrc: cpu_bias_act_jvp_, ids from _ACTIVATION_IDS); tanh's tangent after torch.tanh
    # (cpu_tanh_jvp_)
    act_id = _ACTIVATION_IDS[config.activation]
    act_id = act_id if act_id in (0, 2) else None
    tanh = config.activation == "tanh"

    def run(d: Tensor, deriv: bool) -> tuple[Tensor, Tensor | None]:
        ops = _ext()
        width = lins[-1][0].shape[0]
        val = torch.empty(d.shape[0], width, dtype=d.dtype)
        der = torch.empty(d.shape[0], width, dtype=d.dtype) if deriv else None
        with torch.no_grad():
            for s in range(0, d.shape[0], FILTER_CHUNK):
                dc = d[s : s + FILTER_CHUNK]
                if deriv:
                    h, th, phi, dphi = _radial_jvp(rep, config, dc)
                else:
                    h = radial_basis(rep, config, dc)
                    phi = cosine_cutoff(dc, config.cutoff_lower, config.cutoff_upper)[:, None]
                for wi, bi, activate in lins:
                    if deriv and activate and ops is not None and act_id is not None:
                        h, th = h @ wi.t(), th @ wi.t()
                        ops.cpu_bias_act_jvp_(h, th, bi, act_id)  # in place
                        continue
                    a = F.linear(h, wi, bi)
                    if not deriv:
                        h = act(a) if activate else a
                        continue
                    ta = th @ wi.t()
                    if activate and ops is not None and tanh:
                        h = torch.tanh(a)
                        ops.cpu_tanh_jvp_(ta, h)  # in place
                        th = ta
                    elif activate:
                        h, th = torch.func.jvp(act, (a,), (ta,))
                    else:
                        h, th = a, ta
                e = s + dc.shape[0]
                if deriv and ops is not None:
                    ops.cpu_cutoff_jvp(
                        h.contiguous(),
                        th.contiguous(),
                        phi.contiguous(),
                        dphi.contiguous(),
                        val[s:e],
                        der[s:e],
                    )
                    continue
                torch.mul(h, phi, out=val[s:e])
                if deriv:
                    torch.addcmul(th * phi, h, dphi, out=der[s:e])
        return val, der

    return run


class ExactFilter:
    """Filter values per edge from one MLP evaluation per distinct distance. ``evaluate``
    (optional): a ``(d, deriv) -> (values, derivatives)`` evaluator (``_fused_filter_eval``)
    used instead of forward-mode AD through ``fn``."""

    def __init__(self, fn, d_unique: Tensor, inverse: Tensor, deriv: bool, evaluate=None):
        if evaluate is not None:
            self.table, self.dtable = evaluate(d_unique, deriv)  # [U, 3F]
        else:
            self.table, self.dtable = _value_and_derivative(fn, d_unique, deriv)
        self.inverse = inverse  # [E] edge -> row

    def __call__(self, e0: int, e1: int, deriv: bool) -> tuple[Tensor, Tensor | None]:
        idx = self.inverse[e0:e1]
        return self.table[idx], (self.dtable[idx] if deriv else None)

    def kernel_args(self, deriv: bool) -> tuple:
        """(tab [U, 1, 3F], dtab or None, idx [E], s None, inv_h) for csrc/cpu_tensornet.cpp."""
        dtab = self.dtable[:, None, :].contiguous() if deriv else None
        return self.table[:, None, :].contiguous(), dtab, self.inverse.contiguous(), None, 0.0


class Spline:
    """Hermite spline of a vector function of d on [lo, hi] with power-form coefficients per
    interval [n, degree + 1, C] (p(s) = sum_k coef[:, k] s^k, s in [0, 1)). ``degree`` 3: cubic,
    values and first derivatives exact at the nodes, C^1, error <= h^4/384 max|f''''|; 5:
    quintic, also second derivatives, C^2, error O(h^6). Zero below ``lo`` when lo > 0 (the
    cosine cutoff vanishes there)."""

    def __init__(
        self, fn, lo: float, hi: float, intervals: int, dtype: torch.dtype, degree: int = 3
    ):
        if degree not in (3, 5):
            raise ValueError(f"spline degree must be 3 or 5, got {degree}")
        self.lo, self.hi, self.n, self.degree = float(lo), float(hi), int(intervals), degree
        self.h = (self.hi - self.lo) / self.n
        nodes = torch.linspace(self.lo, self.hi, self.n + 1, dtype=torch.float64)
        # The end nodes' derivatives as one-sided limits from inside [lo, hi]: the cutoff makes
        # f'' jump to 0 at r_c (and at r_l > 0), and a quintic fitted to the outside value had a
        # derivative error of 1e-4 (relative) in its last interval instead of 5e-8.
        inf = torch.tensor(math.inf, dtype=torch.float64)
        nodes[-1] = torch.nextafter(nodes[-1], -inf)
        if self.lo > 0:
            nodes[0] = torch.nextafter(nodes[0], inf)
        y, d1, d2 = _node_derivatives(fn, nodes, degree == 5)  # [n + 1, C] each, float64
        y0, y1, m0, m1 = y[:-1], y[1:], d1[:-1] * self.h, d1[1:] * self.h
        if degree == 3:
            coef = (y0, m0, 3 * (y1 - y0) - 2 * m0 - m1, 2 * (y0 - y1) + m0 + m1)
        else:
            c0, c1 = d2[:-1] * self.h**2, d2[1:] * self.h**2
            # a3..a5 from p(1) = y1, p'(1) = m1, p''(1) = c1 given a0 = y0, a1 = m0, a2 = c0 / 2
            r0, r1, r2 = y1 - y0 - m0 - c0 / 2, m1 - m0 - c0, c1 - c0
            coef = (
                y0,
                m0,
                c0 / 2,
                10 * r0 - 4 * r1 + r2 / 2,
                -15 * r0 + 7 * r1 - r2,
                6 * r0 - 3 * r1 + r2 / 2,
            )
        self.coef = torch.stack(coef, 1).to(dtype).contiguous()  # [n, degree + 1, C]
        self.zero_below = self.lo > 0

    def locate(self, d: Tensor) -> tuple[Tensor, Tensor]:
        """Interval index [E] (int64) and local coordinate s [E] (model dtype); computed in
        float64 so s is not limited by float32 rounding of d / h at large interval indices."""
        t = (d.double() - self.lo) / self.h
        k = t.floor().clamp(0, self.n - 1)
        return k.long(), (t - k).clamp(0.0, 1.0).to(d.dtype)

    def evaluate(self, d: Tensor, deriv: bool) -> tuple[Tensor, Tensor | None]:
        k, s = self.locate(d)
        c = self.coef[k]  # [E, degree + 1, C]
        s1 = s[:, None]
        val = c[:, self.degree]
        for p in range(self.degree - 1, -1, -1):  # Horner
            val = val * s1 + c[:, p]
        der = None
        if deriv:
            der = self.degree * c[:, self.degree]
            for p in range(self.degree - 1, 0, -1):
                der = der * s1 + p * c[:, p]
            der = der / self.h
        if self.zero_below:
            keep = (d >= self.lo).to(val.dtype)[:, None]
            val = val * keep
            der = der * keep if deriv else None
        return val, der


class TabulatedFilter:
    def __init__(self, spline: Spline, g: Graph):
        self.spline, self.g = spline, g

    def __call__(self, e0: int, e1: int, deriv: bool) -> tuple[Tensor, Tensor | None]:
        return self.spline.evaluate(self.g.d[e0:e1], deriv)

    def kernel_args(self, deriv: bool) -> tuple:
        """(coef [n, degree + 1, 3F], None, interval [E] (-1: zero filter), s [E], 1/h)."""
        sp = self.spline
        k, s = self.g.spline_coordinates(sp)
        return sp.coef, None, k, s, 1.0 / sp.h


class TableCheck(NamedTuple):
    """A spline's measured error at CHECK_POINTS of every interval (where the Hermite error
    peaks), against the float64 filter: max |error| relative to max |f| (values) and max |f'|
    (derivatives, i.e. forces). ``fp32_*``: the same for the exact filter MLP evaluated in
    float32, the rounding that ``exact`` mode already makes in a float32 model."""

    value_error: float
    derivative_error: float
    fp32_value_error: float
    fp32_derivative_error: float

    @property
    def within_fp32_rounding(self) -> bool:
        """The table adds no error above float32 rounding of the exact filter (floor: 4 ulps)."""
        floor = 4 * torch.finfo(torch.float32).eps
        return self.value_error <= max(
            self.fp32_value_error, floor
        ) and self.derivative_error <= max(self.fp32_derivative_error, floor)


# Local coordinates of the check points: the quintic's value error ~ s^3 (1 - s)^3 peaks at
# s = 0.5, its derivative error at s = 0.5 -+ 0.22 (and vanishes at 0.5 to leading order).
CHECK_POINTS = (0.25, 0.5, 0.75)


def check_spline(spline: Spline, fn64, fn32) -> TableCheck:
    """Measure ``spline`` (its stored coefficients, evaluated in float64) against the filter
    ``fn64`` (float64 weights) and ``fn32`` (the same weights in float32) at CHECK_POINTS."""
    k = torch.arange(spline.n, dtype=torch.float64)[:, None]
    s = torch.tensor(CHECK_POINTS, dtype=torch.float64)
    d = (spline.lo + (k + s) * spline.h).flatten()  # [3n], strictly inside (lo, hi)
    exact, exact_d, _ = _node_derivatives(fn64, d, False)
    f32, f32_d, _ = _node_derivatives(fn32, d.float(), False)
    as64 = copy.copy(spline)
    as64.coef = spline.coef.double()
    val, der = as64.evaluate(d, True)

    def rel(a: Tensor, ref: Tensor) -> float:
        return float((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))

    return TableCheck(rel(val, exact), rel(der, exact_d), rel(f32, exact), rel(f32_d, exact_d))


def build_splines(
    model, intervals: int = CPU_TABLE_INTERVALS, degree: int = CPU_TABLE_DEGREE
) -> list[Spline]:
    """One spline per radial filter (embedding first, then each layer), built in float64 from a
    float64 copy of the weights and stored in the model's dtype; each carries its measured
    error (``spline.check``, a TableCheck)."""
    config = model.config
    lo, hi = config.cutoff_lower, config.cutoff_upper
    splines = []
    rep64, rep32 = (
        copy.deepcopy(model.representation_model).to(dtype)
        for dtype in (torch.float64, torch.float32)
    )
    for rep in (rep64, rep32):
        rep.requires_grad_(False)
    for fn64, fn32 in zip(filter_fns(rep64, config), filter_fns(rep32, config)):
        spline = Spline(fn64, lo, hi, intervals, model.dtype, degree)
        spline.check = check_spline(spline, fn64, fn32)
        splines.append(spline)
    return splines


# ----------------------------------------------------------------------------- graph
class Graph:
    """The neighbour list as the edge passes need it (all detached, receiver-sorted)."""

    def __init__(self, nl, n_atoms: int):
        self.i, self.j = nl.edge_index[0].contiguous(), nl.edge_index[1].contiguous()
        self.row_ptr = nl.row_ptr.contiguous()
        self.n = n_atoms
        self.e = self.i.shape[0]
        self.d = nl.edge_dist.detach().contiguous()  # [E]
        # [E], 0 on self-loops. A self-loop is the one edge with d = 0 (coincident atoms are
        # rejected before): an atom's own periodic image (i == j, lattice shift) is a real edge.
        self.not_self = (self.d != 0).to(self.d.dtype)
        safe = torch.where(self.not_self > 0, self.d, torch.ones_like(self.d))
        self.rhat = (nl.edge_vec.detach() / safe[:, None] * self.not_self[:, None]).contiguous()
        self.safe_d = safe
        self._located: dict = {}  # spline grid -> (interval, local coordinate) per edge

    def spline_coordinates(self, spline: Spline) -> tuple[Tensor, Tensor]:
        """Interval [E] (-1: zero filter) and local coordinate [E] of every edge on the spline's
        grid. All filters of a model share the grid (lo, h, n), so this is computed once per
        graph, not twice (forward, backward) per filter."""
        key = (spline.lo, spline.h, spline.n, spline.zero_below)
        if key not in self._located:
            ops = _ext()
            if ops is not None:  # one compiled pass, same float64 arithmetic and bits
                k, s = ops.cpu_spline_locate(self.d, *key[:3], spline.zero_below)
            else:
                k, s = spline.locate(self.d)
                if spline.zero_below:
                    k = torch.where(self.d >= spline.lo, k, torch.full_like(k, -1))
            self._located[key] = (k.contiguous(), s.contiguous())
        return self._located[key]

    def edge_vec_grad(self, gd: Tensor, grhat: Tensor | None) -> Tensor:
        """dE/d(edge_vec) [E, 3] from dE/dd [E] and dE/d(rhat) [E, 3]; 0 on self-loops."""
        g = gd[:, None] * self.rhat
        if grhat is not None:
            radial = (grhat * self.rhat).sum(1, keepdim=True)
            g = g + (grhat - radial * self.rhat) / self.safe_d[:, None] * self.not_self[:, None]
        return g


# ----------------------------------------------------------------------------- edge passes
def _expand(f: Tensor) -> Tensor:
    """[c, 3F] filter (I | A | S) -> [c, 9, F] per component."""
    return f.view(f.shape[0], 3, -1)[:, _BLOCK.to(f.device)]


def message_forward(y: Tensor, g: Graph, filt) -> Tensor:
    """M_i = sum_j f_ij (*) Y_j per component.  y [N, 9, F] -> [N, 9, F]."""
    m = torch.zeros_like(y)
    for e0 in range(0, g.e, EDGE_CHUNK):
        e1 = min(g.e, e0 + EDGE_CHUNK)
        f, _ = filt(e0, e1, False)
        m.index_add_(0, g.i[e0:e1], _expand(f) * y.index_select(0, g.j[e0:e1]))
    return m


def message_backward(
    y: Tensor, gm: Tensor, g: Graph, filt, need_y: bool
) -> tuple[Tensor, Tensor | None]:
    """dE/dd [E] (= sum over components and channels of f'_ij gM_i Y_j) and dE/dY [N, 9, F]."""
    gd = torch.empty(g.e, dtype=y.dtype)
    gy = torch.zeros_like(y) if need_y else None
    for e0 in range(0, g.e, EDGE_CHUNK):
        e1 = min(g.e, e0 + EDGE_CHUNK)
        f, fp = filt(e0, e1, True)
        gmi = gm.index_select(0, g.i[e0:e1])  # [c, 9, F]
        gd[e0:e1] = (_expand(fp) * gmi * y.index_select(0, g.j[e0:e1])).sum((1, 2))
        if need_y:
            gy.index_add_(0, g.j[e0:e1], _expand(f) * gmi)
    return gd, gy


def _s_components(r: Tensor) -> Tensor:
    """Coefficients of r r^T - |r|^2/3 Id on the S basis (4..8).  [c, 3] -> [c, 5]"""
    x, y, z = r.unbind(1)
    return torch.stack(
        (
            _S2 * x * y,
            _S2 * x * z,
            _S2 * y * z,
            (x * x - y * y) / _S2,
            (x * x + y * y - 2 * z * z) / _S6,
        ),
        1,
    )


def _s_jacobian(r: Tensor) -> Tensor:
    """d(_s_components)/dr  [c, 5, 3]."""
    x, y, z = r.unbind(1)
    zero = torch.zeros_like(x)
    rows = (
        (_S2 * y, _S2 * x, zero),
        (_S2 * z, zero, _S2 * x),
        (zero, _S2 * z, _S2 * y),
        (_S2 * x, -_S2 * y, zero),
        (2 * x / _S6, 2 * y / _S6, -4 * z / _S6),
    )
    return torch.stack([torch.stack(row, 1) for row in rows], 1)


def _embedding_geometry(r: Tensor) -> Tensor:
    """Per edge the 9 geometric factors multiplying f^I, f^A, f^S.  [c, 9]"""
    return torch.cat((torch.full_like(r[:, :1], _S3), _S2 * r, _s_components(r)), 1)


def embedding_forward(g: Graph, filt, ztab: Tensor, pair: Tensor) -> Tensor:
    """Raw embedding coefficients R_i = sum_j Z_ij (*) f_ij(d) (*) geometry(rhat) [N, 9, F]."""
    f_dim = ztab.shape[1]
    out = torch.zeros(g.n, 9, f_dim, dtype=ztab.dtype)
    for e0 in range(0, g.e, EDGE_CHUNK):
        e1 = min(g.e, e0 + EDGE_CHUNK)
        f, _ = filt(e0, e1, False)
        fz = _expand(f) * ztab[pair[e0:e1]][:, None, :]  # [c, 9, F]
        out.index_add_(0, g.i[e0:e1], fz * _embedding_geometry(g.rhat[e0:e1])[:, :, None])
    return out


def embedding_backward(
    gr: Tensor, g: Graph, filt, ztab: Tensor, pair: Tensor
) -> tuple[Tensor, Tensor]:
    """dE/dd [E] and dE/d(rhat) [E, 3] of the embedding pass, given dE/dR [N, 9, F]."""
    gd = torch.empty(g.e, dtype=gr.dtype)
    grh = torch.empty(g.e, 3, dtype=gr.dtype)
    for e0 in range(0, g.e, EDGE_CHUNK):
        e1 = min(g.e, e0 + EDGE_CHUNK)
        f, fp = filt(e0, e1, True)
        r = g.rhat[e0:e1]
        z = ztab[pair[e0:e1]][:, None, :]  # [c, 1, F]
        gri = gr.index_select(0, g.i[e0:e1])  # [c, 9, F]
        geo = _embedding_geometry(r)  # [c, 9]
        gd[e0:e1] = ((_expand(fp) * z * gri).sum(2) * geo).sum(1)
        per_comp = (_expand(f) * z * gri).sum(2)  # [c, 9]: dE/d(geometry)
        grh[e0:e1] = _grad_rhat(per_comp, r)
    return gd, grh


# ----------------------------------------------------------------------------- profiling
_NO_STAGE = contextlib.nullcontext()


def _stage(name: str):
    """A profiler range named ``tnf.cpu.<name>`` (bench/bench_cpu_backend.py's per-stage
    profile reads them) while a profiler runs; otherwise nothing: entering and leaving a
    record_function costs ~8 us even with no profiler, ~0.1 ms per call of the fused path."""
    if torch._C._autograd._profiler_enabled():
        return record_function("tnf.cpu." + name)
    return _NO_STAGE


# ----------------------------------------------------------------------------- C++ dispatch
USE_EXTENSION = True  # False forces the chunked torch path (tests compare the two)


def _ext():
    """torch.ops.tensornet_fast with the compiled edge kernels (csrc/cpu_tensornet.cpp) when
    the extension is built, else None (the torch path above, same numbers, slower)."""
    if not USE_EXTENSION:
        return None
    return _extension.ops()


def _grad_rhat(ggeo: Tensor, rhat: Tensor) -> Tensor:
    """dE/d(rhat) [E, 3] from dE/d(geometry factors) [E, 9] (see _embedding_geometry)."""
    return _S2 * ggeo[:, 1:4] + torch.einsum("cm,cmk->ck", ggeo[:, 4:], _s_jacobian(rhat))


# ----------------------------------------------------------------------------- autograd glue
# The torch path's edge passes (used when the extension is not built, or with USE_EXTENSION
# False); with the extension, _FusedModel runs the compiled kernels instead.
class _MessagePass(torch.autograd.Function):
    @staticmethod
    @record_function("tnf.cpu.message_fwd")
    def forward(ctx, edge_vec, y, g, filt):
        ctx.g, ctx.filt = g, filt
        y = y.contiguous()
        ctx.save_for_backward(y)
        return message_forward(y, g, filt)

    @staticmethod
    @once_differentiable
    @record_function("tnf.cpu.message_bwd")
    def backward(ctx, gm):
        (y,) = ctx.saved_tensors
        need_y = ctx.needs_input_grad[1]
        gd, gy = message_backward(y, gm.contiguous(), ctx.g, ctx.filt, need_y)
        gv = ctx.g.edge_vec_grad(gd, None) if ctx.needs_input_grad[0] else None
        return gv, gy, None, None


class _EmbeddingPass(torch.autograd.Function):
    @staticmethod
    @record_function("tnf.cpu.embedding_fwd")
    def forward(ctx, edge_vec, g, filt, ztab, pair):
        ctx.g, ctx.filt, ctx.ztab, ctx.pair = g, filt, ztab, pair
        return embedding_forward(g, filt, ztab, pair)

    @staticmethod
    @once_differentiable
    @record_function("tnf.cpu.embedding_bwd")
    def backward(ctx, gr):
        g = ctx.g
        gd, grh = embedding_backward(gr.contiguous(), g, ctx.filt, ctx.ztab, ctx.pair)
        return g.edge_vec_grad(gd, grh), None, None, None, None


# ----------------------------------------------------------------------------- the model
def _pair_table(emb, z: Tensor) -> tuple[Tensor, Tensor, int]:
    """emb2([emb(z_a); emb(z_b)]) for the species present [S*S, F], and each atom's species."""
    species, zidx = torch.unique(z, return_inverse=True)
    atom = emb.emb.weight[species]  # [S, F]
    s = species.shape[0]
    both = torch.cat((atom.repeat_interleave(s, 0), atom.repeat(s, 1)), 1)  # [S*S, 2F]
    return F.linear(both, emb.emb2.weight, emb.emb2.bias), zidx, s


def _pack_weights(w: Tensor, transpose: bool) -> Tensor:
    """Linear weights [..., out, in] packed for the compiled float32 GEMM (csrc: cpu_gemm_pack;
    B = W^T for ``x W^T``, else B = W), or an empty tensor where it does not apply (float64,
    widths not a multiple of 16, no AVX2/FMA, no extension): the kernels then call BLAS."""
    ops = _ext()
    return ops.cpu_gemm_pack(w, transpose) if ops is not None else w.new_empty(0)


class _RowStack:
    """LayerNorm, then linear layers (each optionally followed by the activation) on rows
    [N, C], with detached weights and a hand-written input backward: the fused path's per-atom
    MLPs in one compiled op per direction (csrc: cpu_rows_fwd / cpu_rows_bwd; aten's kernels
    on each thread's rows in one parallel region)."""

    def __init__(self, norm: nn.LayerNorm, layers: list, activation: str):
        self.ln_w, self.ln_b, self.eps = norm.weight.detach(), norm.bias.detach(), norm.eps
        self.ws = [lin.weight.detach() for lin, _ in layers]
        self.bs = [
            lin.bias.detach() if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
            for lin, _ in layers
        ]
        act = _ACTIVATION_IDS[activation]
        self.acts = [act if activate else -1 for _, activate in layers]
        # packed for the compiled GEMM (csrc: cpu_gemm_pack): forward h W^T, backward g W
        self.packed_fwd = [_pack_weights(w, True) for w in self.ws]
        self.packed_bwd = [_pack_weights(w, False) for w in self.ws]

    def forward(self, x: Tensor) -> tuple[Tensor, tuple]:
        out, mean, rstd, *pre_post = _ext().cpu_rows_fwd(
            x, self.ln_w, self.ln_b, self.eps, self.ws, self.bs, self.acts, self.packed_fwd
        )
        # Only activated layers' (pre, out) are needed. A plain last linear's output is the
        # autograd Function's output: kept in its ctx it would make a reference cycle through
        # its grad_fn, and every call's tapes would wait for the cyclic garbage collector.
        empty = x.new_empty(0)
        pre_post = [t if self.acts[k // 2] >= 0 else empty for k, t in enumerate(pre_post)]
        return out, (x, mean, rstd, pre_post)

    def backward(self, g: Tensor, tape: tuple) -> Tensor:
        x, mean, rstd, pre_post = tape
        args = (self.ln_w, self.ln_b, self.ws, self.acts, mean, rstd, pre_post, self.packed_bwd)
        return _ext().cpu_rows_bwd(g.contiguous(), x, *args)


class _Prepared:
    """Per-model constants, built once: the stacked, detached [k, F, F] tensor-channel weights
    of the fused path, and the pair tables ``emb2([emb(a); emb(b)])`` per set of species seen.
    Rebuilt when any parameter is replaced or modified in place (its data pointer or version
    counter changes); building them per call cost ~1 ms of the 64-g2 benchmark."""

    def __init__(self, model):
        rep = model.representation_model
        emb = rep.tensor_embedding
        self.w_emb = torch.stack([lin.weight.detach() for lin in emb.linears_tensor])
        self.w_layers = [
            torch.stack([lin.weight.detach() for lin in layer.linears_tensor])
            for layer in rep.layers
        ]
        # the same weights packed for the compiled GEMM: (forward x W^T, backward g W)
        self.w_emb_packed = (_pack_weights(self.w_emb, True), _pack_weights(self.w_emb, False))
        self.w_layers_packed = [
            (_pack_weights(w, True), _pack_weights(w, False)) for w in self.w_layers
        ]
        self.emb = emb
        self.pair_tables: dict = {}
        act = model.config.activation
        self.embedding_mlp = _RowStack(
            emb.init_norm, [(lin, True) for lin in emb.linears_scalar], act
        )
        head = [m for m in model.output_model.output_network.layers if isinstance(m, nn.Linear)]
        self.head = _RowStack(
            rep.out_norm,
            [(rep.linear, True)] + [(lin, True) for lin in head[:-1]] + [(head[-1], False)],
            act,
        )
        self.o3 = model.config.equivariance_invariance_group == "O(3)"

    @staticmethod
    def key(model) -> list:
        """(data pointer, version) of every parameter, walking ``_modules`` directly:
        ``model.parameters()`` took ~0.1 ms per call (named_modules' generators), this ~25 us."""
        out: list = []
        stack = [model]
        while stack:
            mod = stack.pop()
            params = (p for p in mod._parameters.values() if p is not None)
            out.extend((p.data_ptr(), p._version) for p in params)
            stack.extend(m for m in mod._modules.values() if m is not None)
        return out

    def pair_table(self, z: Tensor) -> tuple[Tensor, Tensor, int]:
        """(ztab [S*S, F] contiguous and detached, species index per atom [N], S)."""
        species, zidx = torch.unique(z, return_inverse=True)
        key = species.numpy().tobytes()
        ztab = self.pair_tables.get(key)
        if ztab is None:
            with torch.no_grad():
                ztab = _pair_table(self.emb, species)[0].contiguous()
            self.pair_tables[key] = ztab
        return ztab, zidx, species.shape[0]


def prepared(model) -> _Prepared:
    key = _Prepared.key(model)
    cached = getattr(model, "_cpu_prepared", None)
    if cached is None or cached[0] != key:
        cached = (key, _Prepared(model))
        model._cpu_prepared = cached
    return cached[1]


def make_filters(model, g: Graph, deriv: bool) -> list:
    """One filter source per radial filter (embedding, then layers) for this graph."""
    config, rep = model.config, model.representation_model
    if model.filter_mode == "tabulated":
        return [TabulatedFilter(s, g) for s in model.cpu_splines()]
    d_unique, inverse = torch.unique(g.d, return_inverse=True)
    fns = filter_fns(rep, config)
    evals = [_fused_filter_eval(rep, config)]
    evals += [_fused_filter_eval(rep, config, layer) for layer in rep.layers]
    return [ExactFilter(fn, d_unique, inverse, deriv, ev) for fn, ev in zip(fns, evals)]


class _FusedModel(torch.autograd.Function):
    """edge_vec [E, 3] -> epsilon_i [N, 1] with the compiled kernels (csrc/cpu_tensornet.cpp):
    embedding pass, combine, every interaction layer (normalisation, channel-linear GEMMs,
    message pass, 3x3 products, residual), squared norms and the output head, with ONE
    hand-written backward to dE/d(edge_vec). One autograd node instead of ~40 (measured on 64
    g2 molecules, 453 atoms: ~0.7 ms of a ~28 ms call, with the fused squared-norm backward; the
    time is in the kernels and GEMMs, not the autograd engine). Weights enter detached
    (inference: positions get gradients, parameters do not; training mode runs the reference
    backend)."""

    @staticmethod
    def forward(ctx, edge_vec, prep, g, filters, ztab, pair, q):
        ops = _ext()
        with _stage("embedding_fwd"):
            tab, _, idx, s, inv_h = filters[0].kernel_args(False)
            raw = ops.cpu_embed_fwd(g.row_ptr, g.rhat, ztab, pair, tab, idx, s, inv_h)
        with _stage("embed_combine_fwd"):
            norm, mlp_tape = prep.embedding_mlp.forward(ops.cpu_sq_norms(raw, False))
            x, p = ops.cpu_embed_combine_fwd(raw, norm, prep.w_emb, prep.w_emb_packed[0])
        layers = []
        for w, (wp, _), filt in zip(prep.w_layers, prep.w_layers_packed, filters[1:]):
            with _stage("layer_fwd"):  # w [6, F, F]
                tab, _, idx, s, inv_h = filt.kernel_args(False)
                out, y, m, dx = ops.cpu_layer_fwd(
                    x, w, wp, q, prep.o3, g.row_ptr, g.j, tab, idx, s, inv_h
                )
            layers.append((x, y, m, dx))
            x = out
        with _stage("head_fwd"):
            feats = ops.cpu_sq_norms(x, True)  # [N, 3F]: 3 I^2 | ||A||^2 | ||S||^2
            eps, head_tape = prep.head.forward(feats)
        ctx.prep, ctx.g, ctx.filters, ctx.ztab, ctx.pair, ctx.q = prep, g, filters, ztab, pair, q
        ctx.tapes = (raw, mlp_tape, norm, p, layers, x, head_tape)
        return eps

    @staticmethod
    @once_differentiable
    def backward(ctx, g_eps):
        ops, prep, g, filters, q = _ext(), ctx.prep, ctx.g, ctx.filters, ctx.q
        raw, mlp_tape, norm, p, layers, x, head_tape = ctx.tapes
        with _stage("head_bwd"):
            gx = ops.cpu_sq_norms_bwd(x, prep.head.backward(g_eps, head_tape))
        gd = None  # dE/dd [E] summed over the layers
        per_layer = zip(prep.w_layers, prep.w_layers_packed, filters[1:], layers)
        for w, (_, wp), filt, saved in reversed(list(per_layer)):
            with _stage("layer_bwd"):
                tab, dtab, idx, s, inv_h = filt.kernel_args(True)
                gx, gd_layer = ops.cpu_layer_bwd(
                    gx, *saved, w, wp, q, prep.o3, g.row_ptr, g.j, tab, dtab, idx, s, inv_h
                )
            gd = gd_layer if gd is None else gd.add_(gd_layer)
        with _stage("embed_combine_bwd"):
            graw, gnorm = ops.cpu_embed_combine_bwd(gx, p, norm, prep.w_emb, prep.w_emb_packed[1])
            gsq = prep.embedding_mlp.backward(gnorm, mlp_tape)
        with _stage("embedding_bwd"):
            # the chain rule through rhat and d to edge_vec is in the kernel, and so is the
            # squared norm's 2 raw gsq (added to graw per row)
            tab, dtab, idx, s, inv_h = filters[0].kernel_args(True)
            edges = (g.row_ptr, g.rhat, g.d, ctx.ztab, ctx.pair)
            filt = (tab, dtab, idx, s, inv_h)
            gv = ops.cpu_embed_bwd(*edges, graw, *filt, raw, gsq.contiguous())
            if gd is not None:
                gv.add_(g.edge_vec_grad(gd, None))
        return gv, None, None, None, None, None, None


def atomic_energies(model, z: Tensor, nl, charge_factor: Tensor) -> Tensor:
    """Per-atom output epsilon_i [N, 1], like ``reference.atomic_energies``."""
    config, rep = model.config, model.representation_model

    g = Graph(nl, z.shape[0])
    deriv = torch.is_grad_enabled() and nl.edge_vec.requires_grad
    with _stage("filters"):
        filters = make_filters(model, g, deriv)

    prep = prepared(model)
    ztab, zidx, n_species = prep.pair_table(z)
    # [E] row of ztab; index_select, not zidx[g.i]: advanced indexing opened a parallel region
    # for 3.8k edges (64 g2 molecules: 158 us -> 41 us for the pair, thread wake-up included)
    pair = zidx.index_select(0, g.i) * n_species + zidx.index_select(0, g.j)
    if _ext() is not None:
        q = charge_factor.detach().to(nl.edge_vec.dtype).contiguous()
        return _FusedModel.apply(nl.edge_vec, prep, g, filters, ztab, pair, q)
    raw = _EmbeddingPass.apply(nl.edge_vec, g, filters[0], ztab, pair)  # [N, 9, F]
    x = embedding_combine(rep, config, raw)  # [N, 9, F]

    q3 = charge_factor[:, None, None]  # [N, 1, 1]
    q4 = charge_factor[:, None, None, None]
    o3 = config.equivariance_invariance_group == "O(3)"
    for layer, filt in zip(rep.layers, filters[1:]):
        wt = [lin.weight for lin in layer.linears_tensor]
        x_bar = x / (sq_norm(x) + 1)[:, None, :]
        y = block_linear(x_bar, wt[0], wt[1], wt[2])
        m = _MessagePass.apply(nl.edge_vec, y, g, filt)
        yf, mf = to_full(y), to_full(m)  # [N, 3, 3, F]
        b = q4 * (_matmul3(mf, yf) + _matmul3(yf, mf)) if o3 else 2 * _matmul3(yf, mf)
        b = from_full(b)
        b = b / (sq_norm(b) + 1)[:, None, :]
        dx = block_linear(b, wt[3], wt[4], wt[5])
        dxf = to_full(dx)
        x = x_bar + dx + q3 * from_full(_matmul3(dxf, dxf))
    return output_energies(model, x)


def embedding_combine(rep, config: ModelConfig, raw: Tensor) -> Tensor:
    """X^0 from the raw embedding sums R [N, 9, F] (SPEC.md embedding steps 4-5), autograd."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    f_dim = config.embedding_dimension
    emb = rep.tensor_embedding
    norm = F.layer_norm(sq_norm(raw), (f_dim,), emb.init_norm.weight, emb.init_norm.bias)
    for lin in emb.linears_scalar:
        norm = act(F.linear(norm, lin.weight, lin.bias))
    n_i, n_a, n_s = norm[:, None, :].split(f_dim, dim=-1)  # [N, 1, F] each
    w = [lin.weight for lin in emb.linears_tensor]
    return torch.cat(
        (raw[:, :1] @ w[0].t() * n_i, raw[:, 1:4] @ w[1].t() * n_a, raw[:, 4:] @ w[2].t() * n_s), 1
    )


def output_energies(model, x: Tensor) -> Tensor:
    """epsilon_i [N, 1] from the final X [N, 9, F] (SPEC.md "Output and energy"), autograd."""
    config, rep = model.config, model.representation_model
    act = ACTIVATION_FUNCTIONS[config.activation]
    feats = torch.cat((x[:, 0] * x[:, 0], sq_norm(x[:, 1:4]), sq_norm(x[:, 4:])), 1)
    f3 = 3 * config.embedding_dimension
    feats = F.layer_norm(feats, (f3,), rep.out_norm.weight, rep.out_norm.bias)
    h = act(F.linear(feats, rep.linear.weight, rep.linear.bias))
    return scalar_head(model.output_model.output_network.layers, config, h)
