"""3x3-per-channel algebra in the full layout [N, 3, 3, F] (docs/spec.md "Notation")."""

from __future__ import annotations

import torch
from torch import Tensor


def identity_part(i: Tensor) -> Tensor:
    """I [N, F] -> I * Id  [N, 3, 3, F]."""
    eye = torch.eye(3, dtype=i.dtype, device=i.device)
    return i[:, None, None, :] * eye[None, :, :, None]


def skew(v: Tensor) -> Tensor:
    """v [N, 3, F] -> skew(v) [N, 3, 3, F], rows (0,-vz,vy), (vz,0,-vx), (-vy,vx,0)."""
    x, y, z = v.unbind(1)
    zero = torch.zeros_like(x)
    rows = (
        torch.stack((zero, -z, y), dim=1),
        torch.stack((z, zero, -x), dim=1),
        torch.stack((-y, x, zero), dim=1),
    )
    return torch.stack(rows, dim=1)


def decompose(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """X [N, 3, 3, F] -> I [N, F], A [N, 3, 3, F], S [N, 3, 3, F] (trace, skew, sym-traceless)."""
    xt = x.transpose(1, 2)
    i = x.diagonal(dim1=1, dim2=2).mean(-1)
    a = 0.5 * (x - xt)
    s = 0.5 * (x + xt) - identity_part(i)
    return i, a, s


def compose(i: Tensor, a: Tensor, s: Tensor) -> Tensor:
    return identity_part(i) + a + s


def squared_norm(x: Tensor) -> Tensor:
    """Squared Frobenius norm per channel: [N, 3, 3, F] -> [N, F]."""
    return (x * x).sum((1, 2))


def channel_linear(x: Tensor, weight: Tensor) -> Tensor:
    """Mix only the last (channel) axis: [..., F] @ W^T."""
    return x @ weight.t()


def matmul3(a: Tensor, b: Tensor) -> Tensor:
    """Per atom and channel 3x3 product (a @ b) in the [N, 3, 3, F] layout."""
    return torch.einsum("nikf,nkjf->nijf", a, b)
