"""The cpu backend without its compiled kernels: the same edge passes and force backward as
chunked PyTorch (per-edge tensors only for EDGE_CHUNK edges at a time), node-level algebra by
autograd. Same numbers as the compiled path within rounding (tests compare the two); used when
the extension is not built or with ``CpuBackend(use_extension=False)``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.profiler import record_function

from ..shared.layout import (
    block_linear,
    embedding_geometry,
    expand_filter,
    from_full,
    grad_rhat,
    matmul3,
    sq_norm,
    to_full,
)
from ..shared.node_ops import embedding_combine, output_energies
from .graph import Graph

# Edges per chunk: 4096 * 9 * F(128) * 4 B = 19 MB per temporary.
EDGE_CHUNK = 4096


def message_forward(y: Tensor, g: Graph, filt) -> Tensor:
    """M_i = sum_j f_ij (*) Y_j per component.  y [N, 9, F] -> [N, 9, F]."""
    m = torch.zeros_like(y)
    for e0 in range(0, g.e, EDGE_CHUNK):
        e1 = min(g.e, e0 + EDGE_CHUNK)
        f, _ = filt(e0, e1, False)
        m.index_add_(0, g.i[e0:e1], expand_filter(f) * y.index_select(0, g.j[e0:e1]))
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
        gd[e0:e1] = (expand_filter(fp) * gmi * y.index_select(0, g.j[e0:e1])).sum((1, 2))
        if need_y:
            gy.index_add_(0, g.j[e0:e1], expand_filter(f) * gmi)
    return gd, gy


def embedding_forward(g: Graph, filt, ztab: Tensor, pair: Tensor) -> Tensor:
    """Raw embedding coefficients R_i = sum_j Z_ij (*) f_ij(d) (*) geometry(rhat) [N, 9, F]."""
    f_dim = ztab.shape[1]
    out = torch.zeros(g.n, 9, f_dim, dtype=ztab.dtype)
    for e0 in range(0, g.e, EDGE_CHUNK):
        e1 = min(g.e, e0 + EDGE_CHUNK)
        f, _ = filt(e0, e1, False)
        fz = expand_filter(f) * ztab[pair[e0:e1]][:, None, :]  # [c, 9, F]
        out.index_add_(0, g.i[e0:e1], fz * embedding_geometry(g.rhat[e0:e1])[:, :, None])
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
        geo = embedding_geometry(r)  # [c, 9]
        gd[e0:e1] = ((expand_filter(fp) * z * gri).sum(2) * geo).sum(1)
        per_comp = (expand_filter(f) * z * gri).sum(2)  # [c, 9]: dE/d(geometry)
        grh[e0:e1] = grad_rhat(per_comp, r)
    return gd, grh


# ----------------------------------------------------------------------------- autograd glue
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


def atomic_energies(model, g: Graph, filters: list, ztab: Tensor, pair: Tensor, edge_vec, q):
    """epsilon_i [N, 1] through the chunked edge passes and autograd node algebra.
    ``q`` [N]: the charge factor."""
    config, rep = model.config, model.representation_model
    raw = _EmbeddingPass.apply(edge_vec, g, filters[0], ztab, pair)  # [N, 9, F]
    x = embedding_combine(rep, config, raw)  # [N, 9, F]
    q3 = q[:, None, None]  # [N, 1, 1]
    q4 = q[:, None, None, None]
    o3 = config.equivariance_invariance_group == "O(3)"
    for layer, filt in zip(rep.layers, filters[1:]):
        wt = [lin.weight for lin in layer.linears_tensor]
        x_bar = x / (sq_norm(x) + 1)[:, None, :]
        y = block_linear(x_bar, wt[0], wt[1], wt[2])
        m = _MessagePass.apply(edge_vec, y, g, filt)
        yf, mf = to_full(y), to_full(m)  # [N, 3, 3, F]
        b = q4 * (matmul3(mf, yf) + matmul3(yf, mf)) if o3 else 2 * matmul3(yf, mf)
        b = from_full(b)
        b = b / (sq_norm(b) + 1)[:, None, :]
        dx = block_linear(b, wt[3], wt[4], wt[5])
        dxf = to_full(dx)
        x = x_bar + dx + q3 * from_full(matmul3(dxf, dxf))
    return output_energies(model, x)
