"""Plain-PyTorch references of the Triton ops (no Triton import), differentiable by autograd.

The kernel tests (tests/test_triton_kernels.py) compare every op's forward and backward with
these, and the benchmarks (bench/bench_triton_kernels.py) time them as the unfused baseline.
Layouts as in the kernels: [N, 9, F] coefficients, [E, 3F] filters blocked I | A | S.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tensornet_fast.backends.cpu.backend import (
    _BASIS64,
    _BLOCK,
    _embedding_filter_fn,
    _layer_filter_fn,
    _matmul3,
)


def _basis(x: Tensor) -> Tensor:
    return _BASIS64.reshape(9, 9).to(dtype=x.dtype, device=x.device)


def _to_full(x: Tensor) -> Tensor:
    """[N, 9, F] coefficients -> [N, 3, 3, F] (any device)."""
    n, _, f = x.shape
    return torch.matmul(_basis(x).t(), x).view(n, 3, 3, f)


def _from_full(m: Tensor) -> Tensor:
    """[N, 3, 3, F] -> [N, 9, F]."""
    n, f = m.shape[0], m.shape[-1]
    return torch.matmul(_basis(m), m.reshape(n, 9, f))


def radial_filter_ref(rep, layer, config, d: Tensor) -> Tensor:
    """Filter values [U, 3F] at distances d [U]; ``layer=None`` is the embedding's projection.
    Differentiable in d (the kernel's derivative output is d/dd of this)."""
    if layer is None:
        return _embedding_filter_fn(rep, config)(d)
    return _layer_filter_fn(rep, layer, config)(d)


def expand_filter(f: Tensor) -> Tensor:
    """[E, 3F] (I | A | S) -> [E, 9, F] per compressed component."""
    return f.view(f.shape[0], 3, -1)[:, _BLOCK.to(f.device)]


def message_ref(y: Tensor, f_edge: Tensor, row: Tensor, col: Tensor) -> Tensor:
    """M_i = sum_{e: row_e = i} f_e (*) Y_{col_e}.  y [N, 9, F], f_edge [E, 3F] -> [N, 9, F]"""
    return torch.zeros_like(y).index_add(0, row, expand_filter(f_edge) * y[col])


def embed_ref(geo: Tensor, f_edge: Tensor, z_edge: Tensor, row: Tensor, n: int) -> Tensor:
    """R_i = sum_e Z_e (*) f_e (*) geo_e.  geo [E, 9], f_edge [E, 3F], z_edge [E, F]"""
    terms = expand_filter(f_edge) * z_edge[:, None, :] * geo[:, :, None]
    return terms.new_zeros(n, 9, z_edge.shape[1]).index_add(0, row, terms)


def product_ref(y: Tensor, m: Tensor, q: Tensor, o3: bool) -> Tensor:
    """B / (||B||^2 + 1), B = q (M Y + Y M) (o3) or 2 Y M."""
    yf, mf = _to_full(y), _to_full(m)
    if o3:
        b = q[:, None, None, None] * (_matmul3(mf, yf) + _matmul3(yf, mf))
    else:
        b = 2 * _matmul3(yf, mf)
    b = _from_full(b)
    return b / ((b * b).sum(1) + 1)[:, None, :]


def update_ref(x_bar: Tensor, dx: Tensor, q: Tensor) -> Tensor:
    """X_bar + dX + q dX dX."""
    dxf = _to_full(dx)
    return x_bar + dx + q[:, None, None] * _from_full(_matmul3(dxf, dxf))
