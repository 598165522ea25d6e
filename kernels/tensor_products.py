"""Per-atom, per-channel 3x3 tensor products of the interaction layer, forward and backward.

* ``product``: B = q (M Y + Y M) (O(3)) or 2 Y M (SO(3)), then B / (||B||^2 + 1)
  (docs/spec.md interaction steps 4-5, the normalisation fused in).
* ``update``:  X_new = X_bar + dX + q dX dX                   (step 6).

Tensors are [N, 9, F] coefficients of the orthonormal basis (kernels/_jit_helpers.py). A
program loads a [BLOCK_N, BLOCK_F] tile of each of the 9 coefficients, expands them to 3x3 in
registers (to_full), multiplies (27 multiply-adds per product and element), projects back
(from_full) and stores 9 tiles: 2 x 36 B (fp32) read and 36 B written per atom and channel, no
[N, 3, 3, F] temporary. The backward recomputes the forward product instead of saving it
(one 3x3 product costs less than reading 36 B more per element).

Layers: private ``@triton.jit`` kernels; launchers; ops ``tnf_triton::{product,
product_backward, update, update_backward}`` with fake implementations and autograd.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._jit_helpers import from_full, kernel_jit, load9, matmul3, store9, to_full

# A backward program holds ~60 live [BLOCK_N, BLOCK_F] tiles (3x3 operands, products, adjoints):
# 8 x 32 = 256 elements over 128 threads is 2 registers per tile and thread, ~120 in all, below
# the 255 limit. The interpreter prefers fewer, larger programs.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK_N, BLOCK_F = (16, 32) if _INTERPRET else (8, 32)


@triton.jit
def _tile(n_rows, F: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    """Offsets of this program's [BLOCK_N, BLOCK_F] tile in an [N, 9, F] tensor, its mask and
    the row indices."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = (rows[:, None] < n_rows) & (f[None, :] < F)
    return rows[:, None] * (9 * F) + f[None, :], mask, rows


@triton.jit
def _product_full(y, m, O3: tl.constexpr):
    """M Y + Y M (O(3)) or 2 Y M (SO(3)) as 9 full-matrix tiles (charge factor not applied)."""
    y00, y01, y02, y10, y11, y12, y20, y21, y22 = to_full(*y)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = to_full(*m)
    ym = matmul3(y00, y01, y02, y10, y11, y12, y20, y21, y22,
                 m00, m01, m02, m10, m11, m12, m20, m21, m22)  # fmt: skip
    if O3:
        my = matmul3(m00, m01, m02, m10, m11, m12, m20, m21, m22,
                     y00, y01, y02, y10, y11, y12, y20, y21, y22)  # fmt: skip
        return (ym[0] + my[0], ym[1] + my[1], ym[2] + my[2], ym[3] + my[3], ym[4] + my[4],
                ym[5] + my[5], ym[6] + my[6], ym[7] + my[7], ym[8] + my[8])  # fmt: skip
    return (2.0 * ym[0], 2.0 * ym[1], 2.0 * ym[2], 2.0 * ym[3], 2.0 * ym[4], 2.0 * ym[5],
            2.0 * ym[6], 2.0 * ym[7], 2.0 * ym[8])  # fmt: skip


@triton.jit
def _sq9(c0, c1, c2, c3, c4, c5, c6, c7, c8):
    return c0 * c0 + c1 * c1 + c2 * c2 + c3 * c3 + c4 * c4 + c5 * c5 + c6 * c6 + c7 * c7 + c8 * c8


@kernel_jit(no_specialize=("n_rows",))
def _product_fwd_kernel(y_ptr, m_ptr, q_ptr, out_ptr, n_rows, F: tl.constexpr, O3: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):  # fmt: skip
    offs, mask, rows = _tile(n_rows, F, BLOCK_N, BLOCK_F)
    y = load9(y_ptr, offs, mask, F)
    m = load9(m_ptr, offs, mask, F)
    q = tl.load(q_ptr + rows, mask=rows < n_rows, other=0.0)[:, None]
    p = _product_full(y, m, O3)
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = from_full(*p)
    if O3:
        b0, b1, b2, b3, b4, b5, b6, b7, b8 = (
            q * b0, q * b1, q * b2, q * b3, q * b4, q * b5, q * b6, q * b7, q * b8)  # fmt: skip
    inv = 1.0 / (_sq9(b0, b1, b2, b3, b4, b5, b6, b7, b8) + 1.0)
    store9(out_ptr, offs, mask, F, b0 * inv, b1 * inv, b2 * inv, b3 * inv, b4 * inv, b5 * inv,
            b6 * inv, b7 * inv, b8 * inv)  # fmt: skip


@kernel_jit(no_specialize=("n_rows",))
def _product_bwd_kernel(y_ptr, m_ptr, q_ptr, g_ptr, gy_ptr, gm_ptr, n_rows,
                        F: tl.constexpr, O3: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_F: tl.constexpr):  # fmt: skip
    offs, mask, rows = _tile(n_rows, F, BLOCK_N, BLOCK_F)
    y = load9(y_ptr, offs, mask, F)
    m = load9(m_ptr, offs, mask, F)
    q = tl.load(q_ptr + rows, mask=rows < n_rows, other=0.0)[:, None]
    if O3:
        scale = q
    else:
        scale = tl.full(q.shape, 1.0, q.dtype)
    p = _product_full(y, m, O3)
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = from_full(*p)
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = (
        scale * b0, scale * b1, scale * b2, scale * b3, scale * b4, scale * b5, scale * b6,
        scale * b7, scale * b8)  # fmt: skip
    g0, g1, g2, g3, g4, g5, g6, g7, g8 = load9(g_ptr, offs, mask, F)
    # out = b / s, s = ||b||^2 + 1:  db = g / s - 2 b (g . b) / s^2
    inv = 1.0 / (_sq9(b0, b1, b2, b3, b4, b5, b6, b7, b8) + 1.0)
    gb = (g0 * b0 + g1 * b1 + g2 * b2 + g3 * b3 + g4 * b4 + g5 * b5 + g6 * b6 + g7 * b7
          + g8 * b8) * 2.0 * inv * inv  # fmt: skip
    # adjoint of from_full is to_full; the charge factor scales the whole product
    p00, p01, p02, p10, p11, p12, p20, p21, p22 = to_full(
        scale * (g0 * inv - b0 * gb), scale * (g1 * inv - b1 * gb), scale * (g2 * inv - b2 * gb),
        scale * (g3 * inv - b3 * gb), scale * (g4 * inv - b4 * gb), scale * (g5 * inv - b5 * gb),
        scale * (g6 * inv - b6 * gb), scale * (g7 * inv - b7 * gb), scale * (g8 * inv - b8 * gb),
    )  # fmt: skip
    y00, y01, y02, y10, y11, y12, y20, y21, y22 = to_full(*y)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = to_full(*m)
    if O3:
        # P = M Y + Y M:  dM = G Y^T + Y^T G,  dY = M^T G + G M^T
        a = matmul3(p00, p01, p02, p10, p11, p12, p20, p21, p22,
                    y00, y10, y20, y01, y11, y21, y02, y12, y22)  # fmt: skip
        b = matmul3(y00, y10, y20, y01, y11, y21, y02, y12, y22,
                    p00, p01, p02, p10, p11, p12, p20, p21, p22)  # fmt: skip
        c = matmul3(m00, m10, m20, m01, m11, m21, m02, m12, m22,
                    p00, p01, p02, p10, p11, p12, p20, p21, p22)  # fmt: skip
        e = matmul3(p00, p01, p02, p10, p11, p12, p20, p21, p22,
                    m00, m10, m20, m01, m11, m21, m02, m12, m22)  # fmt: skip
        gmf = (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5],
               a[6] + b[6], a[7] + b[7], a[8] + b[8])  # fmt: skip
        gyf = (c[0] + e[0], c[1] + e[1], c[2] + e[2], c[3] + e[3], c[4] + e[4], c[5] + e[5],
               c[6] + e[6], c[7] + e[7], c[8] + e[8])  # fmt: skip
    else:
        # P = 2 Y M:  dY = 2 G M^T,  dM = 2 Y^T G
        e = matmul3(p00, p01, p02, p10, p11, p12, p20, p21, p22,
                    m00, m10, m20, m01, m11, m21, m02, m12, m22)  # fmt: skip
        b = matmul3(y00, y10, y20, y01, y11, y21, y02, y12, y22,
                    p00, p01, p02, p10, p11, p12, p20, p21, p22)  # fmt: skip
        gyf = (2.0 * e[0], 2.0 * e[1], 2.0 * e[2], 2.0 * e[3], 2.0 * e[4], 2.0 * e[5],
               2.0 * e[6], 2.0 * e[7], 2.0 * e[8])  # fmt: skip
        gmf = (2.0 * b[0], 2.0 * b[1], 2.0 * b[2], 2.0 * b[3], 2.0 * b[4], 2.0 * b[5],
               2.0 * b[6], 2.0 * b[7], 2.0 * b[8])  # fmt: skip
    store9(gy_ptr, offs, mask, F, *from_full(*gyf))
    store9(gm_ptr, offs, mask, F, *from_full(*gmf))


@kernel_jit(no_specialize=("n_rows",))
def _update_fwd_kernel(xb_ptr, dx_ptr, q_ptr, out_ptr, n_rows, F: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):  # fmt: skip
    offs, mask, rows = _tile(n_rows, F, BLOCK_N, BLOCK_F)
    x = load9(xb_ptr, offs, mask, F)
    dx = load9(dx_ptr, offs, mask, F)
    q = tl.load(q_ptr + rows, mask=rows < n_rows, other=0.0)[:, None]
    d00, d01, d02, d10, d11, d12, d20, d21, d22 = to_full(*dx)
    sq = matmul3(d00, d01, d02, d10, d11, d12, d20, d21, d22,
                 d00, d01, d02, d10, d11, d12, d20, d21, d22)  # fmt: skip
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = from_full(*sq)
    store9(out_ptr, offs, mask, F, x[0] + dx[0] + q * s0, x[1] + dx[1] + q * s1,
            x[2] + dx[2] + q * s2, x[3] + dx[3] + q * s3, x[4] + dx[4] + q * s4,
            x[5] + dx[5] + q * s5, x[6] + dx[6] + q * s6, x[7] + dx[7] + q * s7,
            x[8] + dx[8] + q * s8)  # fmt: skip


@kernel_jit(no_specialize=("n_rows",))
def _update_bwd_kernel(dx_ptr, q_ptr, g_ptr, gdx_ptr, n_rows, F: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):  # fmt: skip
    offs, mask, rows = _tile(n_rows, F, BLOCK_N, BLOCK_F)
    g = load9(g_ptr, offs, mask, F)
    q = tl.load(q_ptr + rows, mask=rows < n_rows, other=0.0)[:, None]
    d00, d01, d02, d10, d11, d12, d20, d21, d22 = to_full(*load9(dx_ptr, offs, mask, F))
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = to_full(*g)
    # d(D D) adjoint: G D^T + D^T G
    a = matmul3(g00, g01, g02, g10, g11, g12, g20, g21, g22,
                d00, d10, d20, d01, d11, d21, d02, d12, d22)  # fmt: skip
    b = matmul3(d00, d10, d20, d01, d11, d21, d02, d12, d22,
                g00, g01, g02, g10, g11, g12, g20, g21, g22)  # fmt: skip
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = from_full(
        a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5],
        a[6] + b[6], a[7] + b[7], a[8] + b[8])  # fmt: skip
    store9(gdx_ptr, offs, mask, F, g[0] + q * s0, g[1] + q * s1, g[2] + q * s2, g[3] + q * s3,
            g[4] + q * s4, g[5] + q * s5, g[6] + q * s6, g[7] + q * s7, g[8] + q * s8)  # fmt: skip


# ----------------------------------------------------------------------------- launchers
def _check(name: str, *tensors: Tensor) -> tuple[int, int]:
    ref = tensors[0]
    if ref.dim() != 3 or ref.shape[1] != 9:
        raise ValueError(f"{name}: expected [N, 9, F] tensors, got {tuple(ref.shape)}")
    for t in tensors[1:]:
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(f"{name}: operands differ in shape, dtype or device")
    return ref.shape[0], ref.shape[2]


def _grid(n: int, f: int) -> tuple[int, int]:
    return triton.cdiv(n, BLOCK_N), triton.cdiv(f, BLOCK_F)


def _charge(q: Tensor, n: int, like: Tensor) -> Tensor:
    if q.shape != (n,):
        raise ValueError(f"charge factor must be [N] = [{n}], got {tuple(q.shape)}")
    return q.to(like.dtype).contiguous()


# ----------------------------------------------------------------------------- ops
@torch.library.custom_op("tnf_triton::product", mutates_args=())
def product(y: Tensor, m: Tensor, q: Tensor, o3: bool) -> Tensor:
    """B / (||B||^2 + 1) with B = q (M Y + Y M) (o3) or 2 Y M.  [N, 9, F] x2, q [N] -> [N, 9, F]"""
    n, f = _check("product", y, m)
    y, m, q = y.contiguous(), m.contiguous(), _charge(q, n, y)
    out = torch.empty_like(y)
    if n:
        _product_fwd_kernel[_grid(n, f)](y, m, q, out, n, F=f, O3=o3, BLOCK_N=BLOCK_N,
                                         BLOCK_F=BLOCK_F)  # fmt: skip
    return out


@product.register_fake
def _(y, m, q, o3):
    return torch.empty_like(y)


@torch.library.custom_op("tnf_triton::product_backward", mutates_args=())
def product_backward(y: Tensor, m: Tensor, q: Tensor, g: Tensor, o3: bool) -> tuple[Tensor, Tensor]:
    """(dE/dY, dE/dM) of ``product`` given dE/dout (recomputes the product)."""
    n, f = _check("product_backward", y, m, g)
    y, m, g, q = y.contiguous(), m.contiguous(), g.contiguous(), _charge(q, n, y)
    gy, gm = torch.empty_like(y), torch.empty_like(m)
    if n:
        _product_bwd_kernel[_grid(n, f)](y, m, q, g, gy, gm, n, F=f, O3=o3, BLOCK_N=BLOCK_N,
                                         BLOCK_F=BLOCK_F)  # fmt: skip
    return gy, gm


@product_backward.register_fake
def _(y, m, q, g, o3):
    return torch.empty_like(y), torch.empty_like(m)


def _product_setup(ctx, inputs, output):
    y, m, q, o3 = inputs
    ctx.save_for_backward(y, m, q)
    ctx.o3 = o3


def _product_grad(ctx, g):
    y, m, q = ctx.saved_tensors
    gy, gm = product_backward(y, m, q, g, ctx.o3)
    return gy, gm, None, None


product.register_autograd(_product_grad, setup_context=_product_setup)


@torch.library.custom_op("tnf_triton::update", mutates_args=())
def update(x_bar: Tensor, dx: Tensor, q: Tensor) -> Tensor:
    """X_bar + dX + q dX dX.  [N, 9, F] x2, q [N] -> [N, 9, F]"""
    n, f = _check("update", x_bar, dx)
    x_bar, dx, q = x_bar.contiguous(), dx.contiguous(), _charge(q, n, dx)
    out = torch.empty_like(dx)
    if n:
        _update_fwd_kernel[_grid(n, f)](x_bar, dx, q, out, n, F=f, BLOCK_N=BLOCK_N,
                                        BLOCK_F=BLOCK_F)  # fmt: skip
    return out


@update.register_fake
def _(x_bar, dx, q):
    return torch.empty_like(dx)


@torch.library.custom_op("tnf_triton::update_backward", mutates_args=())
def update_backward(dx: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """dE/d(dX) of ``update`` given dE/dout (dE/dX_bar is dE/dout itself)."""
    n, f = _check("update_backward", dx, g)
    dx, g, q = dx.contiguous(), g.contiguous(), _charge(q, n, dx)
    gdx = torch.empty_like(dx)
    if n:
        _update_bwd_kernel[_grid(n, f)](dx, q, g, gdx, n, F=f, BLOCK_N=BLOCK_N, BLOCK_F=BLOCK_F)
    return gdx


@update_backward.register_fake
def _(dx, q, g):
    return torch.empty_like(dx)


def _update_setup(ctx, inputs, output):
    x_bar, dx, q = inputs
    ctx.save_for_backward(dx, q)


def _update_grad(ctx, g):
    dx, q = ctx.saved_tensors
    return g, update_backward(dx, q, g), None


update.register_autograd(_update_grad, setup_context=_update_setup)
