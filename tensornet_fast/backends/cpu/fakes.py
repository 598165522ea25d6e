"""Fake kernels of the cpu backend's compiled ops (``torch.ops.tensornet_fast.cpu_*``, csrc/cpu/).

A fake kernel gives an op's output shapes, dtypes and devices without running it, so
torch.compile and torch.export can trace calls to the op (the C++ kernels only run on real
tensors). Registered by ``tensornet_fast._extension.ops()`` right after the extension loads;
importing this module before that fails (the ops do not exist yet). Each fake mirrors the
allocation of its C++ kernel: same shapes, dtypes, contiguous strides.
"""

from __future__ import annotations

import torch
from torch import Tensor

_PANEL = 16  # csrc/cpu/gemm.h kPanel: output columns per packed panel


def _packed_gemm() -> bool:
    """Whether this build packs float32 weights (AVX2 + FMA; csrc/module.cpp)."""
    from ... import _C

    return bool(getattr(_C, "packed_gemm", False))


def _like(x: Tensor) -> Tensor:
    return x.new_empty(x.shape)


@torch.library.register_fake("tensornet_fast::cpu_gemm_pack")
def _gemm_pack(w, transpose):
    torch._check(w.dim() >= 2, lambda: "w must be [..., out, in]")
    # B = W^T [..., in, out] (transpose) or W [..., out, in]: B [..., K, N] -> [..., N/16, K, 16]
    k, n = (w.shape[-1], w.shape[-2]) if transpose else (w.shape[-2], w.shape[-1])
    if not _packed_gemm() or w.dtype != torch.float32 or n % _PANEL != 0:
        return w.new_empty(0)
    return w.new_empty((*w.shape[:-2], n // _PANEL, k, _PANEL))


@torch.library.register_fake("tensornet_fast::cpu_embed_fwd")
def _embed_fwd(row_ptr, rhat, ztab, pair, tab, idx, s, inv_h):
    return ztab.new_empty(row_ptr.shape[0] - 1, 9, ztab.shape[1])  # R [N, 9, F]


@torch.library.register_fake("tensornet_fast::cpu_embed_bwd")
def _embed_bwd(row_ptr, rhat, dist, ztab, pair, gr, tab, dtab, idx, s, inv_h, raw, gsq):
    return gr.new_empty(pair.shape[0], 3)  # dE/d(edge_vec) [E, 3]


@torch.library.register_fake("tensornet_fast::cpu_layer_fwd")
def _layer_fwd(x, w, w_packed, q, o3, row_ptr, col, tab, idx, s, inv_h):
    return [_like(x) for _ in range(4)]  # X_out, Y, M, dX [N, 9, F]


@torch.library.register_fake("tensornet_fast::cpu_layer_bwd")
def _layer_bwd(go, x, y, m, dx, w, w_packed, q, o3, row_ptr, col, tab, dtab, idx, s, inv_h):
    return [_like(x), x.new_empty(col.shape[0])]  # dE/dX [N, 9, F], dE/dd [E]


@torch.library.register_fake("tensornet_fast::cpu_embed_combine_fwd")
def _embed_combine_fwd(raw, norm, w, w_packed):
    return [_like(raw), _like(raw)]  # X, P = W R


@torch.library.register_fake("tensornet_fast::cpu_embed_combine_bwd")
def _embed_combine_bwd(gx, p, norm, w, w_packed):
    return [_like(p), _like(norm)]  # dE/dR, dE/dnorm


@torch.library.register_fake("tensornet_fast::cpu_sq_norms")
def _sq_norms(x, blocks):
    return x.new_empty(x.shape[0], 3 * x.shape[2] if blocks else x.shape[2])


@torch.library.register_fake("tensornet_fast::cpu_sq_norms_bwd")
def _sq_norms_bwd(x, g):
    return _like(x)


@torch.library.register_fake("tensornet_fast::cpu_spline_locate")
def _spline_locate(d, lo, h, n, zero_below):
    return [d.new_empty(d.shape[0], dtype=torch.int64), _like(d)]  # interval, local coordinate


@torch.library.register_fake("tensornet_fast::cpu_rows_fwd")
def _rows_fwd(x, ln_w, ln_b, eps, ws, bs, acts, packed):
    # (mean, rstd, pre_0, out_0, pre_1, out_1, ...) like the C++ kernel: a layer without
    # activation (act -1) returns an empty out_l (its output is pre_l; outputs never alias)
    n = x.shape[0]
    tape = []
    for w, act in zip(ws, acts):
        tape += [
            x.new_empty(n, w.shape[0]),
            x.new_empty(n, w.shape[0]) if act >= 0 else x.new_empty(0),
        ]
    return [x.new_empty(n, 1), x.new_empty(n, 1), *tape]


@torch.library.register_fake("tensornet_fast::cpu_rows_bwd")
def _rows_bwd(g, x, ln_w, ln_b, ws, acts, mean, rstd, pre_post, packed):
    return _like(x)


# In-place ops (Tensor(a!) arguments, no outputs)
@torch.library.register_fake("tensornet_fast::cpu_tanh_jvp_")
def _tanh_jvp_(ta, t):
    return None


@torch.library.register_fake("tensornet_fast::cpu_bias_act_jvp_")
def _bias_act_jvp_(a, ta, bias, act):
    return None


@torch.library.register_fake("tensornet_fast::cpu_cutoff_jvp")
def _cutoff_jvp(h, th, phi, dphi, val, der):
    return None
