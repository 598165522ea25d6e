"""Radial pieces (docs/spec.md "Radial pieces"): cosine cutoff, radial basis functions,
activations, and the radial filters built from them (the embedding's distance projection and
each layer's filter MLP) as functions of d, with their d-derivatives written out. Every backend
evaluates filters through these definitions (the reference math directly, the cpu and triton
backends as exact evaluations or tables)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...model.config import ModelConfig


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


@functools.lru_cache(maxsize=16)
def _smooth_bessel_coefficients(k: int, cutoff: float) -> tuple[tuple[float, ...], ...]:
    """B [K, K+1] with e_n(d) = sum_p B[n, p] sinc((p + 1) pi d / r_c), as nested tuples (a
    cached tensor could escape a torch.func transform).

    The smooth basis (Kocer et al., J. Chem. Phys. 150, 154102 (2019)), as matgl's
    SphericalBessel(use_smooth=True): f_n = a_n (sinc((n+1) pi d / r_c) + sinc((n+2) pi d / r_c))
    with a_n = (-1)^n sqrt(2) pi / r_c^1.5 (n+1)(n+2) / sqrt((n+1)^2 + (n+2)^2), orthogonalised by
    the recursion g_0 = f_0, g_n = (f_n + sqrt(e_n / D_{n-1}) g_{n-1}) / sqrt(D_n), with
    e_n = n^2 (n+2)^2 / (4 (n+1)^4 + 1), D_0 = 1, D_n = 1 - e_n / D_{n-1}. The recursion is
    linear in f, so every g_n is a fixed combination of K + 1 sinc functions: one [E, K+1] sinc
    table and a [K+1] -> [K] product per distance."""
    f = []
    for n in range(k):
        a = (-1) ** n * math.sqrt(2.0) * math.pi / cutoff**1.5
        a *= (n + 1) * (n + 2) / math.sqrt((n + 1) ** 2 + (n + 2) ** 2)
        f.append([a if p in (n, n + 1) else 0.0 for p in range(k + 1)])
    g = [f[0]]
    d_prev = 1.0
    for n in range(1, k):
        e_n = n**2 * (n + 2) ** 2 / (4 * (n + 1) ** 4 + 1)
        d_n = 1.0 - e_n / d_prev
        c = math.sqrt(e_n / d_prev)
        g.append([(f[n][p] + c * g[-1][p]) / math.sqrt(d_n) for p in range(k + 1)])
        d_prev = d_n
    return tuple(tuple(row) for row in g)


def smooth_bessel_terms(k: int, cutoff: float, like: Tensor) -> tuple[Tensor, Tensor]:
    """(frequencies (p + 1) pi / r_c [K+1], coefficients B [K, K+1]) in ``like``'s dtype and
    device (see ``_smooth_bessel_coefficients``)."""
    b = torch.tensor(_smooth_bessel_coefficients(int(k), float(cutoff)), dtype=torch.float64)
    w = torch.arange(1, k + 2, dtype=torch.float64) * (math.pi / float(cutoff))
    return w.to(like.device, like.dtype), b.to(like.device, like.dtype)


# Below this |x| sinc and its slope come from their Taylor series (truncation < 1e-16
# relative): sin(x)/x has no value at 0, and (cos x - sinc x)/x loses eps/x^2 to cancellation.
_SINC_SERIES = 0.01


def _sinc(x: Tensor) -> Tensor:
    """sin(x) / x with the right value and derivatives at and near 0 (the spline nodes at
    d = 0 take its second derivative; padding and self-loop edges have d = 0)."""
    small = x.abs() < _SINC_SERIES
    xs = torch.where(small, torch.ones_like(x), x)
    x2 = x * x
    series = 1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0))
    return torch.where(small, series, torch.sin(xs) / xs)


def _sinc_slope(x: Tensor, s: Tensor) -> Tensor:
    """d sinc(x) / dx given s = sinc(x): (cos x - s) / x, its series near 0."""
    small = x.abs() < _SINC_SERIES
    xs = torch.where(small, torch.ones_like(x), x)
    x2 = x * x
    series = -x / 3.0 * (1.0 - x2 / 10.0 * (1.0 - x2 / 28.0))
    return torch.where(small, series, (torch.cos(xs) - s) / xs)


def smooth_bessel_rbf(d: Tensor, k: int, cutoff: float) -> Tensor:
    """matgl's smooth spherical Bessel basis e_n(d), n < K, no envelope.  [E, K]"""
    w, b = smooth_bessel_terms(k, cutoff, d)
    return _sinc(d.unsqueeze(-1) * w) @ b.t()


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


def radial_basis(rep, config: ModelConfig, d: Tensor) -> Tensor:
    """e(d) [E, K]."""
    rbf = rep.distance_expansion
    if config.rbf_type == "expnorm":
        return expnorm_rbf(d, rbf.means, rbf.betas, config.cutoff_lower, config.cutoff_upper)
    if config.rbf_type == "smooth_bessel":
        return smooth_bessel_rbf(d, config.num_rbf, config.cutoff_upper)
    return gauss_rbf(d, rbf.offset, rbf.coeff)


def radial_filter(layer, config: ModelConfig, rbf: Tensor, phi: Tensor) -> Tensor:
    """h(d) = sigma(W2 sigma(W1 sigma(W0 e + b0) + b1) + b2) * phi  [E, 3F], blocked I | A | S."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    h = rbf
    for lin in layer.linears_scalar:
        h = act(F.linear(h, lin.weight, lin.bias))
    return h * phi[:, None]


def _linear_weights(seq: torch.nn.Module, frozen: bool) -> list[tuple[Tensor, Tensor]]:
    """(weight, bias) of each Linear in ``seq``; ``frozen``: as constants (detached, so autograd
    saves nothing for weight gradients)."""
    linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach(), m.bias.detach()) if frozen else (m.weight, m.bias) for m in linears]


def scalar_head(
    head: torch.nn.Sequential, config: ModelConfig, h: Tensor, frozen: bool = False
) -> Tensor:
    """Linear F -> F/2, sigma, [Linear, sigma]*, Linear -> 1 (no sigma at the end).  [N, 1]
    ``frozen``: the weights as constants (no weight gradients, nothing saved for them)."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    ws = _linear_weights(head, frozen)
    for w, b in ws[:-1]:
        h = act(F.linear(h, w, b))
    return F.linear(h, *ws[-1])


def gated_head(gated: torch.nn.Module, h: Tensor, frozen: bool = False) -> Tensor:
    """matgl's gated readout: [L_n silu .. silu L_1](h) * sigmoid([G_n silu .. silu G_1](h)),
    SiLU whatever the model's activation (matgl's GatedMLP).  [N, F] -> [N, 1]
    ``frozen``: the weights as constants."""
    outs = []
    for seq in (gated.layers, gated.gates):
        x = h
        ws = _linear_weights(seq, frozen)
        for w, b in ws[:-1]:
            x = F.silu(F.linear(x, w, b))
        outs.append(F.linear(x, *ws[-1]))
    return outs[0] * torch.sigmoid(outs[1])


def output_head(
    output_model: torch.nn.Module, config: ModelConfig, h: Tensor, frozen: bool = False
) -> Tensor:
    """epsilon_i [N, 1] from the features after ``linear`` (and its activation, if any): the
    Scalar head (torchmd-net) or the gated readout (matgl). ``frozen``: weights as constants."""
    if config.readout == "gated":
        return gated_head(output_model.gated, h, frozen)
    return scalar_head(output_model.output_network.layers, config, h, frozen)


# ----------------------------------------------------------------------------- radial filters
def embedding_filter_fn(rep, config: ModelConfig):
    """d [U] -> [U, 3F]: (distance_proj{1,2,3}(e(d))) * phi(d), blocked I | A | S."""
    emb = rep.tensor_embedding

    def fn(d: Tensor) -> Tensor:
        rbf = radial_basis(rep, config, d)
        phi = cosine_cutoff(d, config.cutoff_lower, config.cutoff_upper)[:, None]
        w = torch.cat(
            [emb.distance_proj1.weight, emb.distance_proj2.weight, emb.distance_proj3.weight]
        )
        b = torch.cat([emb.distance_proj1.bias, emb.distance_proj2.bias, emb.distance_proj3.bias])
        return F.linear(rbf, w, b) * phi

    return fn


def layer_filter_fn(rep, layer, config: ModelConfig):
    """d [U] -> [U, 3F]: the interaction layer's filter h(d) (phi included)."""

    def fn(d: Tensor) -> Tensor:
        rbf = radial_basis(rep, config, d)
        phi = cosine_cutoff(d, config.cutoff_lower, config.cutoff_upper)
        return radial_filter(layer, config, rbf, phi)

    return fn


def filter_fns(rep, config: ModelConfig) -> list:
    """Every radial filter of ``rep`` as a function d [U] -> [U, 3F]: the embedding's, then
    each interaction layer's (the order of the tables and of the kernels' filter arguments)."""
    return [embedding_filter_fn(rep, config)] + [
        layer_filter_fn(rep, layer, config) for layer in rep.layers
    ]


def cutoff_and_derivative(d: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """phi(d) (cosine_cutoff) and dphi/dd, written out (no forward-mode AD)."""
    phi = cosine_cutoff(d, lo, hi)
    if lo > 0:
        scale = 2.0 / (hi - lo)
        x = scale * (d - lo) + 1.0
        inside = ((d < hi) & (d > lo)).to(d.dtype)
    else:
        scale = 1.0 / hi
        x = d * scale
        inside = (d < hi).to(d.dtype)
    return phi, -0.5 * math.pi * scale * torch.sin(math.pi * x) * inside


def radial_basis_jvp(rep, config: ModelConfig, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """e(d) [U, K], de/dd, phi(d) [U, 1], dphi/dd: the derivatives of the expnorm / gauss /
    smooth Bessel RBF and cosine cutoff written out (forward-mode AD through torch.func costs
    a ~150 MB lazy import and many small ops)."""
    lo, hi = config.cutoff_lower, config.cutoff_upper
    phi, dphi = cutoff_and_derivative(d, lo, hi)
    dd = d[:, None]
    if config.rbf_type == "smooth_bessel":
        w, b = smooth_bessel_terms(config.num_rbf, hi, d)
        x = dd * w  # [U, K+1]
        s = _sinc(x)
        ds = _sinc_slope(x, s) * w  # d sinc(w d) / dd
        return s @ b.t(), ds @ b.t(), phi[:, None], dphi[:, None]
    rbf = rep.distance_expansion
    if config.rbf_type == "expnorm":
        alpha = 5.0 / (hi - lo)
        env, denv = cutoff_and_derivative(dd, 0.0, hi)
        u = torch.exp(alpha * (lo - dd))
        g = torch.exp(-rbf.betas * (u - rbf.means) ** 2)
        e = env * g
        de = g * (denv + env * (2.0 * alpha) * rbf.betas * u * (u - rbf.means))
    else:
        diff = dd - rbf.offset
        e = torch.exp(rbf.coeff * diff**2)
        de = 2.0 * rbf.coeff * diff * e
    return e, de, phi[:, None], dphi[:, None]
