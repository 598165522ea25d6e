"""The compressed layout every fast backend uses: a 3x3 tensor per atom and channel is 9
coefficients in an ORTHONORMAL basis of 3x3 matrices (Frobenius): component 0 = Id/sqrt3 (the I
part), 1..3 = skew(e_k)/sqrt2 (A), 4..8 = symmetric traceless (S). So ||X||^2 is the sum of
squares of the 9 numbers, the I/A/S split is a slice, and a channel linear is one GEMM per block
on [N * k, F]. Tensors are [N, 9, F]; filters are [E, 3F] blocked I | A | S.

Also the per-edge geometry of the embedding (the 9 factors multiplying f^I, f^A, f^S) and its
derivative, shared by the cpu and triton backends and the kernels' PyTorch references.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_S2 = math.sqrt(2.0)
_S3 = math.sqrt(3.0)
_S6 = math.sqrt(6.0)
# component -> I/A/S block, for expanding a [.., 3, F] filter to the 9 components.
BLOCK = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2])


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


BASIS64 = _basis()


def to_full(x: Tensor) -> Tensor:
    """[N, 9, F] coefficients -> [N, 3, 3, F] matrices: one batched [9, 9] @ [9, F] product
    (no permuted copies, which einsum made and which cost more than the arithmetic here)."""
    n, _, f = x.shape
    return torch.matmul(BASIS64.reshape(9, 9).t().to(x.device, x.dtype), x).view(n, 3, 3, f)


def from_full(m: Tensor) -> Tensor:
    """[N, 3, 3, F] -> [N, 9, F] (projection; exact for any matrix, the basis is complete)."""
    n, f = m.shape[0], m.shape[-1]
    return torch.matmul(BASIS64.reshape(9, 9).to(m.device, m.dtype), m.reshape(n, 9, f))


def matmul3(a: Tensor, b: Tensor) -> Tensor:
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


def expand_filter(f: Tensor) -> Tensor:
    """[c, 3F] filter (I | A | S) -> [c, 9, F] per component."""
    return f.view(f.shape[0], 3, -1)[:, BLOCK.to(f.device)]


def s_components(r: Tensor) -> Tensor:
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


def s_jacobian(r: Tensor) -> Tensor:
    """d(s_components)/dr  [c, 5, 3]."""
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


def embedding_geometry(r: Tensor) -> Tensor:
    """Per edge the 9 geometric factors multiplying f^I, f^A, f^S.  [c, 9]"""
    return torch.cat((torch.full_like(r[:, :1], _S3), _S2 * r, s_components(r)), 1)


def grad_rhat(ggeo: Tensor, rhat: Tensor) -> Tensor:
    """dE/d(rhat) [E, 3] from dE/d(geometry factors) [E, 9] (see embedding_geometry)."""
    return _S2 * ggeo[:, 1:4] + torch.einsum("cm,cmk->ck", ggeo[:, 4:], s_jacobian(rhat))
