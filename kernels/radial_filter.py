"""Radial filters of TensorNet and their d-derivatives, one fused kernel per block of distances.

Per distance d: RBF e(d) [K] and de/dd, then either the embedding's projection
(distance_proj1..3, K -> 3F, times phi) or an interaction layer's MLP (K -> F -> 2F -> 3F with
the activation after all three, times phi). The derivative is carried forward-mode (tangents
share the activations), so one pass gives the values the forward needs and the derivatives the
force backward needs. Each MLP layer is a ``tl.dot`` on [BLOCK_U, in] x [in, out] tiles with
``input_precision="ieee"`` (TF32 would cost ~3e-4 relative, docs/spec.md).

The exact backend evaluates this once per DISTINCT distance (d_ij == d_ji bitwise, so at most
once per unordered pair) and the edge kernels gather rows of the [U, 3F] result.

Layers: ``_radial_filter_kernel`` (private), ``radial_filter`` (launcher: validates, pads the
weights once per model into power-of-two tiles, picks the grid), the op
``tnf_triton::radial_filter`` (inference only: the force backward uses the derivative output).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._jit_helpers import ACTIVATION_CODES, act_and_grad, cosine_cutoff_and_grad, kernel_jit

RBF_EXPNORM, RBF_GAUSS, RBF_SINC = 0, 1, 2


def _pow2(n: int) -> int:
    # tl.dot tiles need power-of-two sides of at least 16.
    return max(16, triton.next_power_of_2(int(n)))


@kernel_jit(no_specialize=("n_rows",))
def _radial_filter_kernel(
    d_ptr,  # [U]
    n_rows,
    rbf_a_ptr,  # [KP] expnorm means | gauss offsets | sinc frequencies (zero padded)
    rbf_b_ptr,  # [KP] expnorm betas | gauss coefficients | sinc mask (1 real, 0 padding)
    w0_ptr,  # [KP, H0P] first hidden layer, transposed (N_HIDDEN == 2)
    b0_ptr,  # [H0P]
    w1_ptr,  # [H0P, H1P]
    b1_ptr,  # [H1P]
    wout_ptr,  # [3, INP, FP] output blocks I | A | S, INP = H1P (MLP) or KP (projection)
    bout_ptr,  # [3, FP]
    val_ptr,  # [U, 3F]
    der_ptr,  # [U, 3F] (written when DERIV)
    F: tl.constexpr,
    FP: tl.constexpr,
    KP: tl.constexpr,
    H0P: tl.constexpr,
    H1P: tl.constexpr,
    N_HIDDEN: tl.constexpr,  # 0: embedding projection, 2: interaction filter MLP
    INP: tl.constexpr,  # rows of each output block: H1P (MLP) or KP (projection)
    ACT: tl.constexpr,
    RBF: tl.constexpr,
    LO: tl.constexpr,
    HI: tl.constexpr,
    ALPHA: tl.constexpr,
    PI: tl.constexpr,
    DERIV: tl.constexpr,
    BLOCK_U: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_U + tl.arange(0, BLOCK_U)
    row_ok = rows < n_rows
    d = tl.load(d_ptr + rows, mask=row_ok, other=0.0)[:, None]  # [BU, 1]
    k = tl.arange(0, KP)
    ra = tl.load(rbf_a_ptr + k)[None, :]
    rb = tl.load(rbf_b_ptr + k)[None, :]
    # ---- radial basis e [BU, KP] and de/dd
    if RBF == 0:
        env, denv = cosine_cutoff_and_grad(d, 0.0, HI, PI)
        x = tl.exp(ALPHA * (LO - d))
        g = tl.exp(-rb * (x - ra) * (x - ra))
        e = env * g
        de = denv * g + env * g * (2.0 * ALPHA) * rb * x * (x - ra)
    elif RBF == 1:
        e = tl.exp(rb * (d - ra) * (d - ra))
        de = e * 2.0 * rb * (d - ra)
    else:
        # sinc(w d) = sin(w d) / (w d) (1 at 0), d/dd = (cos(w d) - sinc(w d)) / d (0 at 0);
        # matgl's smooth Bessel basis is a fixed combination of these, folded into the first
        # linear by FilterWeights. Padding columns: w = 0 and mask 0.
        x = ra * d
        at0 = x == 0.0
        xs = tl.where(at0, 1.0, x)
        sn = tl.where(at0, 1.0, tl.sin(xs) / xs)
        ds = tl.where(d == 0.0, 1.0, d)
        e = rb * sn
        de = rb * tl.where(at0, 0.0, (tl.cos(xs) - sn) / ds)
    phi, dphi = cosine_cutoff_and_grad(d, LO, HI, PI)
    # ---- hidden layers (interaction filter only)
    if N_HIDDEN == 2:
        h0i = tl.arange(0, H0P)
        h1i = tl.arange(0, H1P)
        w0 = tl.load(w0_ptr + k[:, None] * H0P + h0i[None, :])
        a0 = tl.dot(e, w0, input_precision="ieee") + tl.load(b0_ptr + h0i)[None, :]
        h0, s0 = act_and_grad(a0, ACT)
        w1 = tl.load(w1_ptr + h0i[:, None] * H1P + h1i[None, :])
        a1 = tl.dot(h0, w1, input_precision="ieee") + tl.load(b1_ptr + h1i)[None, :]
        h1, s1 = act_and_grad(a1, ACT)
        if DERIV:
            t0 = s0 * tl.dot(de, w0, input_precision="ieee")
            t1 = s1 * tl.dot(t0, w1, input_precision="ieee")
        inp = h1
    else:
        inp = e
        if DERIV:
            t1 = de
    # ---- three output blocks (I | A | S), each [BU, FP]
    f = tl.arange(0, FP)
    inp_idx = tl.arange(0, INP)
    out_mask = row_ok[:, None] & (f[None, :] < F)
    for blk in tl.static_range(3):
        w = tl.load(wout_ptr + blk * INP * FP + inp_idx[:, None] * FP + f[None, :])
        a = tl.dot(inp, w, input_precision="ieee") + tl.load(bout_ptr + blk * FP + f)[None, :]
        if N_HIDDEN == 2:
            h, s = act_and_grad(a, ACT)
        else:
            h = a
        offs = rows[:, None] * (3 * F) + blk * F + f[None, :]
        tl.store(val_ptr + offs, h * phi, mask=out_mask)
        if DERIV:
            t = tl.dot(t1, w, input_precision="ieee")
            if N_HIDDEN == 2:
                t = s * t
            tl.store(der_ptr + offs, t * phi + h * dphi, mask=out_mask)


# ----------------------------------------------------------------------------- launcher
class FilterWeights:
    """One radial filter's parameters padded into the kernel's power-of-two tiles (built once
    per model, dtype and device; the weights are frozen for inference)."""

    def __init__(self, rep, layer, config, dtype: torch.dtype, device: torch.device):
        k = config.num_rbf
        f = config.embedding_dimension
        opts = dict(dtype=dtype, device=device)
        rbf = rep.distance_expansion
        # smooth_bessel (matgl): e = B sinc(w d) with B [K, K+1] fixed; B folds into the first
        # linear (W e = (W B) sinc), so the kernel evaluates K+1 sinc functions.
        fold = None
        if config.rbf_type == "smooth_bessel":
            from tensornet_fast.backends.shared.radial import smooth_bessel_terms

            like = torch.zeros((), dtype=torch.float64)
            w_sinc, fold = smooth_bessel_terms(k, config.cutoff_upper, like)
            k = k + 1
        self.f, self.kp, self.fp = f, _pow2(k), _pow2(f)
        self.h0p, self.h1p = _pow2(f), _pow2(2 * f)

        def first(weight: Tensor) -> Tensor:  # [out, K] -> [out, K (+1)]
            weight = weight.detach()
            if fold is None:
                return weight
            return (weight.double() @ fold).to(weight.dtype)

        if config.rbf_type == "smooth_bessel":
            self.rbf = RBF_SINC
            a, b = w_sinc, torch.ones(k, dtype=torch.float64)
        elif config.rbf_type == "expnorm":
            self.rbf = RBF_EXPNORM
            a, b = rbf.means.detach(), rbf.betas.detach()
        else:
            self.rbf = RBF_GAUSS
            a = rbf.offset.detach()
            b = rbf.coeff.detach().reshape(-1).expand(k)
        self.rbf_a = torch.zeros(self.kp, **opts)
        self.rbf_b = torch.zeros(self.kp, **opts)
        self.rbf_a[:k], self.rbf_b[:k] = a.to(**opts), b.to(**opts)
        self.lo, self.hi = float(config.cutoff_lower), float(config.cutoff_upper)
        self.alpha = 5.0 / (self.hi - self.lo)
        self.act = ACTIVATION_CODES[config.activation]
        if layer is None:  # embedding: distance_proj{1,2,3}, K -> F each
            emb = rep.tensor_embedding
            projs = (emb.distance_proj1, emb.distance_proj2, emb.distance_proj3)
            self.n_hidden = 0
            self.w0 = self.b0 = self.w1 = self.b1 = torch.zeros(1, **opts)
            self.wout = torch.zeros(3, self.kp, self.fp, **opts)
            self.bout = torch.zeros(3, self.fp, **opts)
            for blk, p in enumerate(projs):
                self.wout[blk, :k, :f] = first(p.weight).t()
                self.bout[blk, :f] = p.bias.detach()
        else:  # K -> F -> 2F -> 3F (blocked I | A | S in the last layer's rows)
            l0, l1, l2 = layer.linears_scalar
            self.n_hidden = 2
            self.w0 = torch.zeros(self.kp, self.h0p, **opts)
            self.w0[:k, :f] = first(l0.weight).t()
            self.b0 = torch.zeros(self.h0p, **opts)
            self.b0[:f] = l0.bias.detach()
            self.w1 = torch.zeros(self.h0p, self.h1p, **opts)
            self.w1[:f, : 2 * f] = l1.weight.detach().t()
            self.b1 = torch.zeros(self.h1p, **opts)
            self.b1[: 2 * f] = l1.bias.detach()
            self.wout = torch.zeros(3, self.h1p, self.fp, **opts)
            self.bout = torch.zeros(3, self.fp, **opts)
            w2, b2 = l2.weight.detach(), l2.bias.detach()  # [3F, 2F], [3F]
            for blk in range(3):
                self.wout[blk, : 2 * f, :f] = w2[blk * f : (blk + 1) * f].t()
                self.bout[blk, :f] = b2[blk * f : (blk + 1) * f]

    def tensors(self) -> list[Tensor]:
        return [self.rbf_a, self.rbf_b, self.w0, self.b0, self.w1, self.b1, self.wout, self.bout]


# BLOCK_U: the [BLOCK_U, 2F] hidden tile and its tangent live in registers: 32 rows at F = 128
# is 2 x 32 x 256 x 4 B = 64 KB per program, a quarter of an H100 SM's register file; 16 rows
# from F = 256 on.


@torch.library.custom_op("tnf_triton::radial_filter", mutates_args=())
def radial_filter_op(
    d: Tensor,
    rbf_a: Tensor,
    rbf_b: Tensor,
    w0: Tensor,
    b0: Tensor,
    w1: Tensor,
    b1: Tensor,
    wout: Tensor,
    bout: Tensor,
    f: int,
    n_hidden: int,
    act: int,
    rbf: int,
    lo: float,
    hi: float,
    deriv: bool,
) -> tuple[Tensor, Tensor]:
    """(values [U, 3F], d-derivatives [U, 3F] or an empty tensor) at distances d [U]. The
    padded parameters come from :class:`FilterWeights`. No autograd: the force backward of the
    edge ops consumes the derivative output."""
    n = d.shape[0]
    val = torch.empty(n, 3 * f, dtype=d.dtype, device=d.device)
    der = torch.empty_like(val) if deriv else val.new_empty(0)
    if n:
        kp, h1p, fp = rbf_a.shape[0], wout.shape[1], wout.shape[2]
        h0p = w0.shape[1] if n_hidden else 16
        block = 16 if h1p >= 512 else 32  # BLOCK_U, see above
        _radial_filter_kernel[(triton.cdiv(n, block),)](
            d, n, rbf_a, rbf_b, w0, b0, w1, b1, wout, bout, val, der if deriv else val,
            F=f, FP=fp, KP=kp, H0P=h0p, H1P=h1p if n_hidden else 16, N_HIDDEN=n_hidden,
            INP=h1p, ACT=act, RBF=rbf, LO=lo, HI=hi, ALPHA=5.0 / (hi - lo), PI=math.pi,
            DERIV=deriv, BLOCK_U=block,
        )  # fmt: skip
    return val, der


@radial_filter_op.register_fake
def _(d, rbf_a, rbf_b, w0, b0, w1, b1, wout, bout, f, n_hidden, act, rbf, lo, hi, deriv):
    val = d.new_empty(d.shape[0], 3 * f)
    return val, (d.new_empty(d.shape[0], 3 * f) if deriv else d.new_empty(0))


def radial_filter(d: Tensor, w: FilterWeights, deriv: bool) -> tuple[Tensor, Tensor | None]:
    """Filter values [U, 3F] (and d-derivatives [U, 3F] when ``deriv``) at distances d [U]."""
    if d.dim() != 1:
        raise ValueError(f"d must be 1-D, got shape {tuple(d.shape)}")
    if d.dtype != w.wout.dtype or d.device != w.wout.device:
        raise ValueError(
            f"d is {d.dtype} on {d.device}, the filter weights {w.wout.dtype} on {w.wout.device}"
        )
    val, der = radial_filter_op(
        d.contiguous(), *w.tensors(), w.f, w.n_hidden, w.act, w.rbf, w.lo, w.hi, deriv
    )
    return val, (der if deriv else None)
