"""Shared ``@triton.jit`` device functions: activations with their derivatives, the cosine
cutoff, and the 9-coefficient <-> 3x3 conversions of the compressed tensor layout.

The compressed layout (tensornet_fast/cpu_backend.py) stores every 3x3 tensor as 9
coefficients in an orthonormal basis: c0 = Id/sqrt3 (I), c1..c3 = skew(e_x, e_y, e_z)/sqrt2
(A), c4..c8 symmetric traceless (S). Because the basis is orthonormal, the squared Frobenius
norm is the sum of squares of the coefficients and the adjoint of ``to_full`` is ``from_full``.
"""

from __future__ import annotations

import inspect
import os

import triton
import triton.language as tl


def kernel_jit(no_specialize=(), no_align=()):
    """``triton.jit`` that does not specialise the named size arguments (Triton otherwise
    compiles one variant for sizes divisible by 16, one for 1 and one for the rest) nor the
    named pointers on 16-byte alignment (``edge_index[1]`` starts 8 * E bytes into its storage:
    aligned or not with the parity of E). One binary per kernel, dtype and configuration then
    serves every system size, so a GPU host compiles each once (bench/gpu_check.py plans its
    JIT time on that). ``do_not_specialize_on_alignment`` is passed where this Triton has it."""
    kwargs = {"do_not_specialize": list(no_specialize)}
    if no_align and "do_not_specialize_on_alignment" in inspect.signature(triton.jit).parameters:
        kwargs["do_not_specialize_on_alignment"] = list(no_align)
    return triton.jit(**kwargs)


def pick_configs(configs: list) -> list:
    """The autotuner's configurations, or only the k-th with TNF_TRITON_CONFIG=k (no autotuning:
    one compile per kernel; bench/gpu_check.py warms each configuration's binaries in its own
    process, in parallel)."""
    choice = os.environ.get("TNF_TRITON_CONFIG", "")
    if choice.strip().lstrip("-").isdigit():
        return [configs[int(choice) % len(configs)]]
    return configs


# Activation codes (constexpr) shared with the launchers.
ACT_SILU, ACT_TANH, ACT_SIGMOID, ACT_SSP, ACT_MISH = 0, 1, 2, 3, 4
ACTIVATION_CODES = {
    "silu": ACT_SILU,
    "swish": ACT_SILU,
    "tanh": ACT_TANH,
    "sigmoid": ACT_SIGMOID,
    "ssp": ACT_SSP,
    "mish": ACT_MISH,
}

INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT3 = tl.constexpr(0.5773502691896258)
INV_SQRT6 = tl.constexpr(0.4082482904638631)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with its threshold 20: linear above it.
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))


@triton.jit
def _tanh(x):
    # tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no overflow, no cancellation at 0
    # beyond one rounding (the 2 sigmoid(2x) - 1 form loses relative precision near 0).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def act_and_grad(x, ACT: tl.constexpr):
    """(sigma(x), sigma'(x)) for the activation code ACT."""
    if ACT == 0:  # silu
        s = tl.sigmoid(x)
        return x * s, s * (1.0 + x * (1.0 - s))
    elif ACT == 1:  # tanh
        t = _tanh(x)
        return t, 1.0 - t * t
    elif ACT == 2:  # sigmoid
        s = tl.sigmoid(x)
        return s, s * (1.0 - s)
    elif ACT == 3:  # shifted softplus
        return _softplus(x) - LN2, tl.sigmoid(x)
    else:  # mish: x tanh(softplus(x))
        t = _tanh(_softplus(x))
        return x * t, t + x * (1.0 - t * t) * tl.sigmoid(x)


@triton.jit
def cosine_cutoff_and_grad(d, LO: tl.constexpr, HI: tl.constexpr, PI: tl.constexpr):
    """phi(d) and phi'(d) (docs/spec.md "Radial pieces"); LO = r_l, HI = r_c."""
    if LO > 0:
        x = 2.0 * (d - LO) / (HI - LO) + 1.0
        inside = (d < HI) & (d > LO)
        phi = tl.where(inside, 0.5 * (tl.cos(PI * x) + 1.0), 0.0)
        dphi = tl.where(inside, -0.5 * tl.sin(PI * x) * PI * 2.0 / (HI - LO), 0.0)
    else:
        inside = d < HI
        phi = tl.where(inside, 0.5 * (tl.cos(d * (PI / HI)) + 1.0), 0.0)
        dphi = tl.where(inside, -0.5 * tl.sin(d * (PI / HI)) * (PI / HI), 0.0)
    return phi, dphi


@triton.jit
def to_full(c0, c1, c2, c3, c4, c5, c6, c7, c8):
    """9 coefficients -> the 3x3 matrix, row-major (m00, m01, ..., m22)."""
    diag = c0 * INV_SQRT3
    m00 = diag + c7 * INV_SQRT2 + c8 * INV_SQRT6
    m11 = diag - c7 * INV_SQRT2 + c8 * INV_SQRT6
    m22 = diag - 2.0 * c8 * INV_SQRT6
    m01 = (c4 - c3) * INV_SQRT2
    m10 = (c4 + c3) * INV_SQRT2
    m02 = (c5 + c2) * INV_SQRT2
    m20 = (c5 - c2) * INV_SQRT2
    m12 = (c6 - c1) * INV_SQRT2
    m21 = (c6 + c1) * INV_SQRT2
    return m00, m01, m02, m10, m11, m12, m20, m21, m22


@triton.jit
def from_full(m00, m01, m02, m10, m11, m12, m20, m21, m22):
    """3x3 matrix -> its 9 coefficients (orthogonal projection, exact for any matrix)."""
    c0 = (m00 + m11 + m22) * INV_SQRT3
    c1 = (m21 - m12) * INV_SQRT2
    c2 = (m02 - m20) * INV_SQRT2
    c3 = (m10 - m01) * INV_SQRT2
    c4 = (m01 + m10) * INV_SQRT2
    c5 = (m02 + m20) * INV_SQRT2
    c6 = (m12 + m21) * INV_SQRT2
    c7 = (m00 - m11) * INV_SQRT2
    c8 = (m00 + m11 - 2.0 * m22) * INV_SQRT6
    return c0, c1, c2, c3, c4, c5, c6, c7, c8


@triton.jit
def matmul3(a00, a01, a02, a10, a11, a12, a20, a21, a22,
            b00, b01, b02, b10, b11, b12, b20, b21, b22):  # fmt: skip
    """C = A B for 3x3 matrices held as 9 register tiles each (27 multiply-adds per element)."""
    return (
        a00 * b00 + a01 * b10 + a02 * b20,
        a00 * b01 + a01 * b11 + a02 * b21,
        a00 * b02 + a01 * b12 + a02 * b22,
        a10 * b00 + a11 * b10 + a12 * b20,
        a10 * b01 + a11 * b11 + a12 * b21,
        a10 * b02 + a11 * b12 + a12 * b22,
        a20 * b00 + a21 * b10 + a22 * b20,
        a20 * b01 + a21 * b11 + a22 * b21,
        a20 * b02 + a21 * b12 + a22 * b22,
    )


@triton.jit
def load9(ptr, offs, mask, F: tl.constexpr):
    """The 9 coefficient tiles of an [.., 9, F] tensor at offsets ``offs`` of component 0."""
    return (
        tl.load(ptr + offs, mask=mask, other=0.0),
        tl.load(ptr + offs + F, mask=mask, other=0.0),
        tl.load(ptr + offs + 2 * F, mask=mask, other=0.0),
        tl.load(ptr + offs + 3 * F, mask=mask, other=0.0),
        tl.load(ptr + offs + 4 * F, mask=mask, other=0.0),
        tl.load(ptr + offs + 5 * F, mask=mask, other=0.0),
        tl.load(ptr + offs + 6 * F, mask=mask, other=0.0),
        tl.load(ptr + offs + 7 * F, mask=mask, other=0.0),
        tl.load(ptr + offs + 8 * F, mask=mask, other=0.0),
    )


@triton.jit
def store9(ptr, offs, mask, F: tl.constexpr, c0, c1, c2, c3, c4, c5, c6, c7, c8):
    """Store 9 coefficient tiles (the inverse of load9)."""
    tl.store(ptr + offs, c0, mask=mask)
    tl.store(ptr + offs + F, c1, mask=mask)
    tl.store(ptr + offs + 2 * F, c2, mask=mask)
    tl.store(ptr + offs + 3 * F, c3, mask=mask)
    tl.store(ptr + offs + 4 * F, c4, mask=mask)
    tl.store(ptr + offs + 5 * F, c5, mask=mask)
    tl.store(ptr + offs + 6 * F, c6, mask=mask)
    tl.store(ptr + offs + 7 * F, c7, mask=mask)
    tl.store(ptr + offs + 8 * F, c8, mask=mask)
