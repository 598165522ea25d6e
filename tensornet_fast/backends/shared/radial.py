"""Radial pieces: cosine cutoff, radial basis functions, activations (SPEC.md "Radial pieces")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_cutoff(d: Tensor, cutoff_lower: float, cutoff_upper: float) -> Tensor:
    """phi(d); with a lower cutoff phi vanishes below it (self-loops, d = 0, get 0)."""
    if cutoff_lower > 0:
        x = 2.0 * (d - cutoff_lower) / (cutoff_upper - cutoff_lower) + 1.0
        phi = 0.5 * (torch.cos(math.pi * x) + 1.0)
        return phi * ((d < cutoff_upper) & (d > cutoff_lower)).to(d.dtype)
    phi = 0.5 * (torch.cos(d * (math.pi / cutoff_upper)) + 1.0)
    return phi * (d < cutoff_upper).to(d.dtype)


def expnorm_rbf(
    d: Tensor, means: Tensor, betas: Tensor, cutoff_lower: float, cutoff_upper: float
) -> Tensor:
    """e_k(d) = phi_0(d) exp(-beta_k (exp(alpha (r_l - d)) - mu_k)^2), alpha = 5/(r_c - r_l).

    Returns [E, K]."""
    alpha = 5.0 / (cutoff_upper - cutoff_lower)
    d = d.unsqueeze(-1)
    envelope = cosine_cutoff(d, 0.0, cutoff_upper)
    return envelope * torch.exp(-betas * (torch.exp(alpha * (-d + cutoff_lower)) - means) ** 2)


def gauss_rbf(d: Tensor, offset: Tensor, coeff: Tensor) -> Tensor:
    """e_k(d) = exp(c (d - o_k)^2), no envelope.  [E, K]"""
    return torch.exp(coeff * (d.unsqueeze(-1) - offset) ** 2)


def _shifted_softplus(x: Tensor) -> Tensor:
    return F.softplus(x) - math.log(2.0)


ACTIVATION_FUNCTIONS = {
    "silu": F.silu,
    "swish": F.silu,  # torchmd-net's Swish with beta = 1 is SiLU
    "ssp": _shifted_softplus,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "mish": F.mish,
}
