"""Plain-PyTorch references of the Triton ops (no Triton import), differentiable by autograd.

The kernel tests (tests/test_triton_kernels.py) compare every op's forward and backward with
these, and the benchmarks (bench/bench_triton_kernels.py) time them as the unfused baseline.
Layouts as in the kernels: [N, 9, F] coefficients, [E, 3F] filters blocked I | A | S.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tensornet_fast.backends.shared.layout import expand_filter, from_full, matmul3, to_full
from tensornet_fast.backends.shared.radial import embedding_filter_fn, layer_filter_fn


def radial_filter_ref(rep, layer, config, d: Tensor) -> Tensor:
    """Filter values [U, 3F] at distances d [U]; ``layer=None`` is the embedding's projection.
    Differentiable in d (the kernel's derivative output is d/dd of this)."""
    if layer is None:
        return embedding_filter_fn(rep, config)(d)
    return layer_filter_fn(rep, layer, config)(d)


def message_ref(y: Tensor, f_edge: Tensor, row: Tensor, col: Tensor) -> Tensor:
    """M_i = sum_{e: row_e = i} f_e (*) Y_{col_e}.  y [N, 9, F], f_edge [E, 3F] -> [N, 9, F]"""
    return torch.zeros_like(y).index_add(0, row, expand_filter(f_edge) * y[col])


def embed_ref(geo: Tensor, f_edge: Tensor, z_edge: Tensor, row: Tensor, n: int) -> Tensor:
    """R_i = sum_e Z_e (*) f_e (*) geo_e.  geo [E, 9], f_edge [E, 3F], z_edge [E, F]"""
    terms = expand_filter(f_edge) * z_edge[:, None, :] * geo[:, :, None]
    return terms.new_zeros(n, 9, z_edge.shape[1]).index_add(0, row, terms)


def product_ref(y: Tensor, m: Tensor, q: Tensor, o3: bool) -> Tensor:
    """B / (||B||^2 + 1), B = q (M Y + Y M) (o3) or 2 Y M."""
    yf, mf = to_full(y), to_full(m)
    if o3:
        b = q[:, None, None, None] * (matmul3(mf, yf) + matmul3(yf, mf))
    else:
        b = 2 * matmul3(yf, mf)
    b = from_full(b)
    return b / ((b * b).sum(1) + 1)[:, None, :]


def update_ref(x_bar: Tensor, dx: Tensor, q: Tensor) -> Tensor:
    """X_bar + dX + q dX dX."""
    dxf = to_full(dx)
    return x_bar + dx + q[:, None, None] * from_full(matmul3(dxf, dxf))
