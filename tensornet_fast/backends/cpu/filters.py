"""The cpu backend's radial filters per call: ``exact`` (the filter MLP once per DISTINCT
distance -- d_ij == d_ji bitwise, so at most once per unordered pair -- value and d-derivative
propagated together) or ``tabulated`` (the shared quintic tables, ``backends.shared.tables``,
evaluated per edge inside the kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...model.config import ModelConfig
from ..shared.radial import (
    ACTIVATION_FUNCTIONS,
    cosine_cutoff,
    filter_fns,
    radial_basis,
    radial_basis_jvp,
)
from ..shared.tables import Spline, filter_tables
from .graph import Graph
from .ops import ACTIVATION_IDS

# Distances per block when evaluating the exact filter MLP (bounds its [U, 3F] temporaries).
FILTER_CHUNK = 8192


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


def _fused_filter_eval(rep, config: ModelConfig, ops, layer=None):
    """(d [U], deriv) -> (f [U, 3F], df/dd or None) for the embedding filter (layer None) or a
    layer's filter MLP: value and tangent propagated together through the same linears, so
    each activation is evaluated once and its derivative reuses it; the tangent's GEMMs are
    the only extra work. Outputs are written in place block by block (FILTER_CHUNK rows).
    ``ops``: the compiled kernels (fused bias + activation + tangent), or None."""
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
    # (csrc: cpu_bias_act_jvp_, ids from ACTIVATION_IDS); tanh's tangent after torch.tanh
    # (cpu_tanh_jvp_)
    act_id = ACTIVATION_IDS[config.activation]
    act_id = act_id if act_id in (0, 2) else None
    tanh = config.activation == "tanh"

    def run(d: Tensor, deriv: bool) -> tuple[Tensor, Tensor | None]:
        width = lins[-1][0].shape[0]
        val = torch.empty(d.shape[0], width, dtype=d.dtype)
        der = torch.empty(d.shape[0], width, dtype=d.dtype) if deriv else None
        with torch.no_grad():
            for s in range(0, d.shape[0], FILTER_CHUNK):
                dc = d[s : s + FILTER_CHUNK]
                if deriv:
                    h, th, phi, dphi = radial_basis_jvp(rep, config, dc)
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
        """(tab [U, 1, 3F], dtab or None, idx [E], s None, inv_h) for the compiled kernels
        (csrc/cpu/)."""
        dtab = self.dtable[:, None, :].contiguous() if deriv else None
        return self.table[:, None, :].contiguous(), dtab, self.inverse.contiguous(), None, 0.0


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


def make_filters(model, mode: str, g: Graph, deriv: bool, ops, key: tuple | None = None) -> list:
    """One filter source per radial filter (embedding, then layers) for this graph (``key``:
    the model's current ``weights_key``)."""
    config, rep = model.config, model.representation_model
    if mode == "tabulated":
        return [TabulatedFilter(s, g) for s in filter_tables(model, key)]
    d_unique, inverse = torch.unique(g.d, return_inverse=True)
    fns = filter_fns(rep, config)
    evals = [_fused_filter_eval(rep, config, ops)]
    evals += [_fused_filter_eval(rep, config, ops, layer) for layer in rep.layers]
    return [ExactFilter(fn, d_unique, inverse, deriv, ev) for fn, ev in zip(fns, evals)]
