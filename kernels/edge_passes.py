"""The two edge passes of TensorNet as CSR segment reductions, forward and force backward.

* ``embed``:   R_i = sum_j Z_ij (*) f_ij(d) (*) geo_ij    (embedding, docs/spec.md steps 2-3)
* ``message``: M_i = sum_j f_ij(d) (*) Y_j                (interaction step 3)

Both run over edges sorted by receiver (the radius graph's CSR): one program per (receiver,
block of channels) loops over that receiver's edges, forms the per-edge terms in registers and
accumulates 9 coefficient tiles [BLOCK_F] — no per-edge [E, 9, F] or [E, 3F] tensor, no atomics.
Tensors are in the compressed layout [N, 9, F] (kernels/_jit_helpers.py): component c belongs to
block I (c = 0), A (1..3) or S (4..8) and takes that block's filter.

Filters come from a table (exact mode: rows of ``radial_filter`` at the distinct distances,
``idx`` maps an edge to its row) or from a quintic Hermite spline in d evaluated in the kernel
(tabulated mode: ``tab`` = coefficients [n, 6, 3F] on [lo, lo + n / inv_h], the project's one
tabulated mode, tensornet_fast/backends/shared/tables.py).

The backward (forces) is hand-written: per edge, dE/dd = sum over components and channels of
f'(d) x (receiver adjoint) x (sender features); for ``embed`` also dE/d(geo) [E, 9]. The
adjoint of Y is itself a message pass of the receiver adjoints, because the graph is symmetric
with f_ij = f_ji (every edge has its reverse, with a bitwise equal d): callers must pass such
graphs (the radius graph always is).

Layers: private ``@triton.jit`` kernels; launchers (validate, allocate, grid); ops
``tnf_triton::{embed, embed_backward, message, message_backward}`` with fake implementations and
autograd registrations.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._jit_helpers import kernel_jit, pick_configs, store9

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _csr_configs():
    # One configuration under the interpreter (each config would run the kernel again).
    if INTERPRET:
        return [triton.Config({"BLOCK_E": 16, "BLOCK_F": 32}, num_warps=4)]
    return pick_configs([
        triton.Config({"BLOCK_E": be, "BLOCK_F": bf}, num_warps=w)
        for be, bf, w in ((16, 32, 2), (16, 64, 4), (32, 64, 4), (32, 128, 8), (16, 128, 4))
    ])  # fmt: skip


def _edge_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_E": 32, "BLOCK_F": 32}, num_warps=4)]
    return pick_configs([
        triton.Config({"BLOCK_E": be, "BLOCK_F": bf}, num_warps=w)
        for be, bf, w in ((32, 32, 4), (64, 32, 4), (32, 64, 4), (64, 64, 8), (128, 32, 8))
    ])  # fmt: skip


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _filter_block(tab_ptr, dtab_ptr, row, s, f2, m2, BLK: tl.constexpr, F: tl.constexpr,
                  TAB: tl.constexpr, DERIV: tl.constexpr, INV_H: tl.constexpr):  # fmt: skip
    """Filter value (and d-derivative) of block BLK (0 I, 1 A, 2 S) for a tile of edges
    [BE, 1] x channels f2 [1, BF]; ``row`` is the table row (exact) or spline interval."""
    if TAB:
        base = tab_ptr + row * (18 * F) + BLK * F + f2  # coef [n, 6, 3F]
        c0 = tl.load(base, mask=m2, other=0.0)
        c1 = tl.load(base + 3 * F, mask=m2, other=0.0)
        c2 = tl.load(base + 6 * F, mask=m2, other=0.0)
        c3 = tl.load(base + 9 * F, mask=m2, other=0.0)
        c4 = tl.load(base + 12 * F, mask=m2, other=0.0)
        c5 = tl.load(base + 15 * F, mask=m2, other=0.0)
        val = ((((c5 * s + c4) * s + c3) * s + c2) * s + c1) * s + c0
        if DERIV:
            der = ((((5.0 * c5 * s + 4.0 * c4) * s + 3.0 * c3) * s + 2.0 * c2) * s + c1) * INV_H
        else:
            der = val
    else:
        offs = row * (3 * F) + BLK * F + f2
        val = tl.load(tab_ptr + offs, mask=m2, other=0.0)
        if DERIV:
            der = tl.load(dtab_ptr + offs, mask=m2, other=0.0)
        else:
            der = val
    return val, der


@triton.jit
def _filters3(tab_ptr, dtab_ptr, row, s, f2, m2, F: tl.constexpr, TAB: tl.constexpr,
              DERIV: tl.constexpr, INV_H: tl.constexpr):  # fmt: skip
    """(f^I, f^A, f^S, f'^I, f'^A, f'^S) tiles [BE, BF] of one tile of edges (derivatives equal
    the values when not DERIV)."""
    fi, gi = _filter_block(tab_ptr, dtab_ptr, row, s, f2, m2, 0, F, TAB, DERIV, INV_H)
    fa, ga = _filter_block(tab_ptr, dtab_ptr, row, s, f2, m2, 1, F, TAB, DERIV, INV_H)
    fs, gs = _filter_block(tab_ptr, dtab_ptr, row, s, f2, m2, 2, F, TAB, DERIV, INV_H)
    return fi, fa, fs, gi, ga, gs


@triton.jit
def _edge_filter_coords(d_ptr, idx_ptr, offs_e, mask_e, N_INT, LO: tl.constexpr,
                        INV_H: tl.constexpr,
                        TAB: tl.constexpr):  # fmt: skip
    """Per edge [BE, 1]: table row (exact) or spline interval, local coordinate s and a 0/1
    factor that zeroes the filter below a lower cutoff (tabulated)."""
    d = tl.load(d_ptr + offs_e, mask=mask_e, other=0.0)
    if TAB:
        # Interval and local coordinate in float64, so s is not limited by float32 rounding
        # of d / h at large interval indices (512 intervals: h ~ 1e-2 A at r_c = 5).
        t = (d.to(tl.float64) - LO) * INV_H
        kf = tl.minimum(tl.maximum(tl.floor(t), 0.0), N_INT - 1.0)
        s = tl.minimum(tl.maximum(t - kf, 0.0), 1.0).to(d.dtype)
        row = kf.to(tl.int64)
        # exact zeros outside [r_l, r_c) (padding / Verlet-skin edges beyond the cutoff)
        keep = tl.where((d >= LO) & (t < N_INT), 1.0, 0.0).to(d.dtype)
    else:
        row = tl.load(idx_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        s = d
        keep = tl.full(d.shape, 1.0, d.dtype)
    return row[:, None], s[:, None], keep[:, None]


# ----------------------------------------------------------------------------- message
@triton.autotune(configs=_csr_configs(), key=["F", "TAB"])
@kernel_jit(no_specialize=("N_INT",), no_align=("col_ptr",))
def _message_fwd_kernel(
    row_ptr_ptr,  # [N + 1] CSR over receivers
    col_ptr,  # [E] senders
    y_ptr,  # [N, 9, F]
    d_ptr,  # [E]
    tab_ptr,  # [U, 3F] exact | [n, 6, 3F] tabulated
    idx_ptr,  # [E] table row (exact)
    out_ptr,  # [N, 9, F]
    N_INT,
    INV_H: tl.constexpr,  # 1/h of the spline: a compile-time float64 (a runtime float
    # argument would be passed as float32, 1e-7 relative off in s)
    LO: tl.constexpr,
    F: tl.constexpr,
    TAB: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = f < F
    f2 = f[None, :]
    start = tl.load(row_ptr_ptr + i)
    end = tl.load(row_ptr_ptr + i + 1)
    acc = tl.zeros((BLOCK_F,), tl.float32).to(y_ptr.dtype.element_ty)
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = acc, acc, acc, acc, acc, acc, acc, acc, acc
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        m2 = mask_e[:, None] & mask_f[None, :]
        row, s, keep = _edge_filter_coords(d_ptr, idx_ptr, offs_e, mask_e, N_INT, LO, INV_H,
                                              TAB)  # fmt: skip
        fi, fa, fs, _, _, _ = _filters3(tab_ptr, tab_ptr, row, s, f2, m2, F, TAB, False, INV_H)
        fi, fa, fs = fi * keep, fa * keep, fs * keep
        j = tl.load(col_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        yb = y_ptr + j[:, None] * (9 * F) + f2
        a0 += tl.sum(fi * tl.load(yb, mask=m2, other=0.0), 0)
        a1 += tl.sum(fa * tl.load(yb + F, mask=m2, other=0.0), 0)
        a2 += tl.sum(fa * tl.load(yb + 2 * F, mask=m2, other=0.0), 0)
        a3 += tl.sum(fa * tl.load(yb + 3 * F, mask=m2, other=0.0), 0)
        a4 += tl.sum(fs * tl.load(yb + 4 * F, mask=m2, other=0.0), 0)
        a5 += tl.sum(fs * tl.load(yb + 5 * F, mask=m2, other=0.0), 0)
        a6 += tl.sum(fs * tl.load(yb + 6 * F, mask=m2, other=0.0), 0)
        a7 += tl.sum(fs * tl.load(yb + 7 * F, mask=m2, other=0.0), 0)
        a8 += tl.sum(fs * tl.load(yb + 8 * F, mask=m2, other=0.0), 0)
    store9(out_ptr, i * (9 * F) + f, mask_f, F, a0, a1, a2, a3, a4, a5, a6, a7, a8)


@triton.autotune(configs=_edge_configs(), key=["F", "TAB"])
@kernel_jit(no_specialize=("n_edges", "N_INT"), no_align=("col_ptr",))
def _message_dd_kernel(
    row_ptr,  # [E] receivers
    col_ptr,  # [E] senders
    y_ptr,  # [N, 9, F] sender features
    gm_ptr,  # [N, 9, F] receiver adjoints dE/dM
    d_ptr,
    tab_ptr,
    dtab_ptr,
    idx_ptr,
    gd_ptr,  # [E] out: dE/dd
    n_edges,
    N_INT,
    INV_H: tl.constexpr,  # 1/h of the spline: a compile-time float64 (a runtime float
    # argument would be passed as float32, 1e-7 relative off in s)
    LO: tl.constexpr,
    F: tl.constexpr,
    TAB: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    offs_e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < n_edges
    rowt, s, keep = _edge_filter_coords(d_ptr, idx_ptr, offs_e, mask_e, N_INT, LO, INV_H, TAB)
    i = tl.load(row_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)[:, None]
    j = tl.load(col_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)[:, None]
    acc = tl.zeros((BLOCK_E,), tl.float32).to(y_ptr.dtype.element_ty)
    for f0 in tl.static_range(0, F, BLOCK_F):
        f = f0 + tl.arange(0, BLOCK_F)
        f2 = f[None, :]
        m2 = mask_e[:, None] & (f2 < F)
        _, _, _, gi, ga, gs = _filters3(tab_ptr, dtab_ptr, rowt, s, f2, m2, F, TAB, True, INV_H)
        yb = y_ptr + j * (9 * F) + f2
        gb = gm_ptr + i * (9 * F) + f2
        t = gi * tl.load(yb, mask=m2, other=0.0) * tl.load(gb, mask=m2, other=0.0)
        ta = tl.load(yb + F, mask=m2, other=0.0) * tl.load(gb + F, mask=m2, other=0.0)
        ta += tl.load(yb + 2 * F, mask=m2, other=0.0) * tl.load(gb + 2 * F, mask=m2, other=0.0)
        ta += tl.load(yb + 3 * F, mask=m2, other=0.0) * tl.load(gb + 3 * F, mask=m2, other=0.0)
        ts = tl.load(yb + 4 * F, mask=m2, other=0.0) * tl.load(gb + 4 * F, mask=m2, other=0.0)
        for c in tl.static_range(5, 9):
            ts += tl.load(yb + c * F, mask=m2, other=0.0) * tl.load(gb + c * F, mask=m2, other=0.0)
        acc += tl.sum(t + ga * ta + gs * ts, 1)
    tl.store(gd_ptr + offs_e, acc * tl.reshape(keep, (BLOCK_E,)), mask=mask_e)


# ----------------------------------------------------------------------------- embedding
@triton.autotune(configs=_csr_configs(), key=["F", "TAB"])
@kernel_jit(no_specialize=("N_INT",))
def _embed_fwd_kernel(
    row_ptr_ptr,  # [N + 1]
    geo_ptr,  # [E, 9] geometric factors of each component
    pair_ptr,  # [E] row of ztab
    ztab_ptr,  # [P, F] element-pair embedding Z_ij
    d_ptr,
    tab_ptr,
    idx_ptr,
    out_ptr,  # [N, 9, F]
    N_INT,
    INV_H: tl.constexpr,  # 1/h of the spline: a compile-time float64 (a runtime float
    # argument would be passed as float32, 1e-7 relative off in s)
    LO: tl.constexpr,
    F: tl.constexpr,
    TAB: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = f < F
    f2 = f[None, :]
    start = tl.load(row_ptr_ptr + i)
    end = tl.load(row_ptr_ptr + i + 1)
    acc = tl.zeros((BLOCK_F,), tl.float32).to(ztab_ptr.dtype.element_ty)
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = acc, acc, acc, acc, acc, acc, acc, acc, acc
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        m2 = mask_e[:, None] & mask_f[None, :]
        row, s, keep = _edge_filter_coords(d_ptr, idx_ptr, offs_e, mask_e, N_INT, LO, INV_H,
                                              TAB)  # fmt: skip
        fi, fa, fs, _, _, _ = _filters3(tab_ptr, tab_ptr, row, s, f2, m2, F, TAB, False, INV_H)
        p = tl.load(pair_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        z = tl.load(ztab_ptr + p[:, None] * F + f2, mask=m2, other=0.0) * keep
        fi, fa, fs = fi * z, fa * z, fs * z
        gb = geo_ptr + offs_e[:, None] * 9
        a0 += tl.sum(fi * tl.load(gb, mask=mask_e[:, None], other=0.0), 0)
        a1 += tl.sum(fa * tl.load(gb + 1, mask=mask_e[:, None], other=0.0), 0)
        a2 += tl.sum(fa * tl.load(gb + 2, mask=mask_e[:, None], other=0.0), 0)
        a3 += tl.sum(fa * tl.load(gb + 3, mask=mask_e[:, None], other=0.0), 0)
        a4 += tl.sum(fs * tl.load(gb + 4, mask=mask_e[:, None], other=0.0), 0)
        a5 += tl.sum(fs * tl.load(gb + 5, mask=mask_e[:, None], other=0.0), 0)
        a6 += tl.sum(fs * tl.load(gb + 6, mask=mask_e[:, None], other=0.0), 0)
        a7 += tl.sum(fs * tl.load(gb + 7, mask=mask_e[:, None], other=0.0), 0)
        a8 += tl.sum(fs * tl.load(gb + 8, mask=mask_e[:, None], other=0.0), 0)
    store9(out_ptr, i * (9 * F) + f, mask_f, F, a0, a1, a2, a3, a4, a5, a6, a7, a8)


@triton.autotune(configs=_edge_configs(), key=["F", "TAB"])
@kernel_jit(no_specialize=("n_edges", "N_INT"))
def _embed_bwd_kernel(
    row_ptr,  # [E] receivers
    geo_ptr,  # [E, 9]
    pair_ptr,
    ztab_ptr,
    gr_ptr,  # [N, 9, F] dE/dR
    d_ptr,
    tab_ptr,
    dtab_ptr,
    idx_ptr,
    gd_ptr,  # [E] out: dE/dd
    ggeo_ptr,  # [E, 9] out: dE/dgeo
    n_edges,
    N_INT,
    INV_H: tl.constexpr,  # 1/h of the spline: a compile-time float64 (a runtime float
    # argument would be passed as float32, 1e-7 relative off in s)
    LO: tl.constexpr,
    F: tl.constexpr,
    TAB: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    offs_e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < n_edges
    rowt, s, keep = _edge_filter_coords(d_ptr, idx_ptr, offs_e, mask_e, N_INT, LO, INV_H, TAB)
    i = tl.load(row_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)[:, None]
    p = tl.load(pair_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)[:, None]
    zero = tl.zeros((BLOCK_E,), tl.float32).to(ztab_ptr.dtype.element_ty)
    # dE/dgeo_c = sum_f f_blk(c) z gR_c;  the same with f' gives dE/dd after the geo weights.
    v0, v1, v2, v3, v4, v5, v6, v7, v8 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    for f0 in tl.static_range(0, F, BLOCK_F):
        f = f0 + tl.arange(0, BLOCK_F)
        f2 = f[None, :]
        m2 = mask_e[:, None] & (f2 < F)
        fi, fa, fs, gi, ga, gs = _filters3(tab_ptr, dtab_ptr, rowt, s, f2, m2, F, TAB, True,
                                           INV_H)  # fmt: skip
        z = tl.load(ztab_ptr + p * F + f2, mask=m2, other=0.0)
        gb = gr_ptr + i * (9 * F) + f2
        g = tl.load(gb, mask=m2, other=0.0) * z
        v0 += tl.sum(fi * g, 1)
        w0 += tl.sum(gi * g, 1)
        g = tl.load(gb + F, mask=m2, other=0.0) * z
        v1 += tl.sum(fa * g, 1)
        w1 += tl.sum(ga * g, 1)
        g = tl.load(gb + 2 * F, mask=m2, other=0.0) * z
        v2 += tl.sum(fa * g, 1)
        w2 += tl.sum(ga * g, 1)
        g = tl.load(gb + 3 * F, mask=m2, other=0.0) * z
        v3 += tl.sum(fa * g, 1)
        w3 += tl.sum(ga * g, 1)
        g = tl.load(gb + 4 * F, mask=m2, other=0.0) * z
        v4 += tl.sum(fs * g, 1)
        w4 += tl.sum(gs * g, 1)
        g = tl.load(gb + 5 * F, mask=m2, other=0.0) * z
        v5 += tl.sum(fs * g, 1)
        w5 += tl.sum(gs * g, 1)
        g = tl.load(gb + 6 * F, mask=m2, other=0.0) * z
        v6 += tl.sum(fs * g, 1)
        w6 += tl.sum(gs * g, 1)
        g = tl.load(gb + 7 * F, mask=m2, other=0.0) * z
        v7 += tl.sum(fs * g, 1)
        w7 += tl.sum(gs * g, 1)
        g = tl.load(gb + 8 * F, mask=m2, other=0.0) * z
        v8 += tl.sum(fs * g, 1)
        w8 += tl.sum(gs * g, 1)
    kp = tl.reshape(keep, (BLOCK_E,))
    gg = geo_ptr + offs_e * 9
    go = ggeo_ptr + offs_e * 9
    gd = w0 * tl.load(gg, mask=mask_e, other=0.0)
    gd += w1 * tl.load(gg + 1, mask=mask_e, other=0.0)
    gd += w2 * tl.load(gg + 2, mask=mask_e, other=0.0)
    gd += w3 * tl.load(gg + 3, mask=mask_e, other=0.0)
    gd += w4 * tl.load(gg + 4, mask=mask_e, other=0.0)
    gd += w5 * tl.load(gg + 5, mask=mask_e, other=0.0)
    gd += w6 * tl.load(gg + 6, mask=mask_e, other=0.0)
    gd += w7 * tl.load(gg + 7, mask=mask_e, other=0.0)
    gd += w8 * tl.load(gg + 8, mask=mask_e, other=0.0)
    tl.store(gd_ptr + offs_e, gd * kp, mask=mask_e)
    tl.store(go, v0 * kp, mask=mask_e)
    tl.store(go + 1, v1 * kp, mask=mask_e)
    tl.store(go + 2, v2 * kp, mask=mask_e)
    tl.store(go + 3, v3 * kp, mask=mask_e)
    tl.store(go + 4, v4 * kp, mask=mask_e)
    tl.store(go + 5, v5 * kp, mask=mask_e)
    tl.store(go + 6, v6 * kp, mask=mask_e)
    tl.store(go + 7, v7 * kp, mask=mask_e)
    tl.store(go + 8, v8 * kp, mask=mask_e)


# ----------------------------------------------------------------------------- launchers
def _check_filters(d: Tensor, tab: Tensor, idx: Tensor, f: int, tabulated: bool) -> None:
    if tabulated:
        if tab.dim() != 3 or tab.shape[1:] != (6, 3 * f):
            raise ValueError(f"spline coefficients must be [n, 6, {3 * f}], got {tuple(tab.shape)}")
    else:
        if tab.dim() != 2 or tab.shape[1] != 3 * f:
            raise ValueError(f"filter table must be [U, {3 * f}], got {tuple(tab.shape)}")
        if idx.shape != d.shape:
            raise ValueError(f"idx must be [E] like d, got {tuple(idx.shape)}")
    if tab.dtype != d.dtype:
        raise ValueError(f"filter table is {tab.dtype}, distances {d.dtype}")


def _n_intervals(tab: Tensor, tabulated: bool) -> int:
    return int(tab.shape[0]) if tabulated else 1


def _csr_grid(n: int, f: int):
    return lambda meta: (n, triton.cdiv(f, meta["BLOCK_F"]))


def _edge_grid(e: int):
    return lambda meta: (triton.cdiv(e, meta["BLOCK_E"]),)


def _message_fwd(y, d, row_ptr, col, tab, idx, lo, inv_h, tabulated) -> Tensor:
    n, nine, f = y.shape
    if nine != 9:
        raise ValueError(f"y must be [N, 9, F], got {tuple(y.shape)}")
    _check_filters(d, tab, idx, f, tabulated)
    out = torch.empty_like(y)
    if n:
        _message_fwd_kernel[_csr_grid(n, f)](
            row_ptr, col, y, d, tab, idx, out, _n_intervals(tab, tabulated), inv_h,
            LO=lo, F=f, TAB=tabulated,
        )  # fmt: skip
    return out


def _embed_fwd(geo, d, pair, ztab, row_ptr, tab, idx, lo, inv_h, tabulated) -> Tensor:
    n, f = row_ptr.shape[0] - 1, ztab.shape[1]
    _check_filters(d, tab, idx, f, tabulated)
    if geo.shape != (d.shape[0], 9):
        raise ValueError(f"geo must be [E, 9], got {tuple(geo.shape)}")
    out = torch.empty(n, 9, f, dtype=ztab.dtype, device=ztab.device)
    if n:
        _embed_fwd_kernel[_csr_grid(n, f)](
            row_ptr, geo, pair, ztab, d, tab, idx, out, _n_intervals(tab, tabulated), inv_h,
            LO=lo, F=f, TAB=tabulated,
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- ops
@torch.library.custom_op("tnf_triton::message", mutates_args=())
def message(
    y: Tensor,
    d: Tensor,
    row_ptr: Tensor,
    row: Tensor,
    col: Tensor,
    tab: Tensor,
    dtab: Tensor,
    idx: Tensor,
    lo: float,
    inv_h: float,
    tabulated: bool,
) -> Tensor:
    """M_i = sum_j f_ij (*) Y_j.  y [N, 9, F], d [E] (receiver-sorted) -> [N, 9, F].
    Differentiable in y and d (dtab holds f'(d) in exact mode; unused when tabulated)."""
    y, d = y.contiguous(), d.contiguous()
    return _message_fwd(y, d, row_ptr, col, tab, idx, lo, inv_h, tabulated)


@message.register_fake
def _(y, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabulated):
    return torch.empty_like(y)


@torch.library.custom_op("tnf_triton::message_backward", mutates_args=())
def message_backward(
    y: Tensor,
    gm: Tensor,
    d: Tensor,
    row: Tensor,
    col: Tensor,
    tab: Tensor,
    dtab: Tensor,
    idx: Tensor,
    lo: float,
    inv_h: float,
    tabulated: bool,
) -> Tensor:
    """dE/dd [E] = sum_{c, f} f'_ij gM_i Y_j of the message pass."""
    y, gm, d = y.contiguous(), gm.contiguous(), d.contiguous()
    e, f = d.shape[0], y.shape[2]
    gd = torch.empty(e, dtype=y.dtype, device=y.device)
    if e:
        _message_dd_kernel[_edge_grid(e)](
            row, col, y, gm, d, tab, dtab, idx, gd, e, _n_intervals(tab, tabulated), inv_h,
            LO=lo, F=f, TAB=tabulated,
        )  # fmt: skip
    return gd


@message_backward.register_fake
def _(y, gm, d, row, col, tab, dtab, idx, lo, inv_h, tabulated):
    return d.new_empty(d.shape)


def _message_setup(ctx, inputs, output):
    y, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabulated = inputs
    ctx.save_for_backward(y, d, row_ptr, row, col, tab, dtab, idx)
    ctx.consts = (lo, inv_h, tabulated)


def _message_grad(ctx, gm):
    y, d, row_ptr, row, col, tab, dtab, idx = ctx.saved_tensors
    lo, inv_h, tabulated = ctx.consts
    gm = gm.contiguous()
    gy = gd = None
    if ctx.needs_input_grad[0]:
        # Symmetric graph, f_ij = f_ji: dE/dY_j = sum_i f_ij gM_i is the message pass of gM.
        gy = message(gm, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabulated)
    if ctx.needs_input_grad[1]:
        gd = message_backward(y, gm, d, row, col, tab, dtab, idx, lo, inv_h, tabulated)
    return gy, gd, None, None, None, None, None, None, None, None, None


message.register_autograd(_message_grad, setup_context=_message_setup)


@torch.library.custom_op("tnf_triton::embed", mutates_args=())
def embed(
    geo: Tensor,
    d: Tensor,
    pair: Tensor,
    ztab: Tensor,
    row_ptr: Tensor,
    row: Tensor,
    tab: Tensor,
    dtab: Tensor,
    idx: Tensor,
    lo: float,
    inv_h: float,
    tabulated: bool,
) -> Tensor:
    """R_i = sum_j Z[pair_ij] (*) f_ij(d) (*) geo_ij.  geo [E, 9], d [E] -> [N, 9, F].
    Differentiable in geo and d (Z, the element-pair table, is a constant here)."""
    return _embed_fwd(
        geo.contiguous(), d.contiguous(), pair, ztab.contiguous(), row_ptr, tab, idx, lo, inv_h,
        tabulated,
    )  # fmt: skip


@embed.register_fake
def _(geo, d, pair, ztab, row_ptr, row, tab, dtab, idx, lo, inv_h, tabulated):
    return ztab.new_empty(row_ptr.shape[0] - 1, 9, ztab.shape[1])


@torch.library.custom_op("tnf_triton::embed_backward", mutates_args=())
def embed_backward(
    gr: Tensor,
    geo: Tensor,
    d: Tensor,
    pair: Tensor,
    ztab: Tensor,
    row: Tensor,
    tab: Tensor,
    dtab: Tensor,
    idx: Tensor,
    lo: float,
    inv_h: float,
    tabulated: bool,
) -> tuple[Tensor, Tensor]:
    """(dE/dd [E], dE/dgeo [E, 9]) of the embedding pass given dE/dR [N, 9, F]."""
    gr, geo, d = gr.contiguous(), geo.contiguous(), d.contiguous()
    e, f = d.shape[0], ztab.shape[1]
    gd = torch.empty(e, dtype=gr.dtype, device=gr.device)
    ggeo = torch.empty(e, 9, dtype=gr.dtype, device=gr.device)
    if e:
        _embed_bwd_kernel[_edge_grid(e)](
            row, geo, pair, ztab, gr, d, tab, dtab, idx, gd, ggeo, e,
            _n_intervals(tab, tabulated), inv_h, LO=lo, F=f, TAB=tabulated,
        )  # fmt: skip
    return gd, ggeo


@embed_backward.register_fake
def _(gr, geo, d, pair, ztab, row, tab, dtab, idx, lo, inv_h, tabulated):
    return d.new_empty(d.shape), geo.new_empty(geo.shape)


def _embed_setup(ctx, inputs, output):
    geo, d, pair, ztab, row_ptr, row, tab, dtab, idx, lo, inv_h, tabulated = inputs
    ctx.save_for_backward(geo, d, pair, ztab, row, tab, dtab, idx)
    ctx.consts = (lo, inv_h, tabulated)


def _embed_grad(ctx, gr):
    geo, d, pair, ztab, row, tab, dtab, idx = ctx.saved_tensors
    gd, ggeo = embed_backward(gr, geo, d, pair, ztab, row, tab, dtab, idx, *ctx.consts)
    return ggeo, gd, None, None, None, None, None, None, None, None, None, None


embed.register_autograd(_embed_grad, setup_context=_embed_setup)
