"""The reference backend: TensorNet's forward in plain PyTorch, exactly as docs/spec.md writes it.

Forces come from autograd through it. It favours clarity over speed (per-edge [E, 3, 3, F]
tensors appear in the embedding and message passing); the fused backends are tested against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...model.config import ModelConfig
from ...model.params import InteractionParams, RepresentationParams, TensorEmbeddingParams
from ..shared.radial import (
    ACTIVATION_FUNCTIONS,
    cosine_cutoff,
    output_head,
    radial_basis,
    radial_filter,
)
from .tensor_algebra import (
    channel_linear,
    compose,
    decompose,
    identity_part,
    matmul3,
    skew,
    squared_norm,
)


def _linear(module: torch.nn.Linear, x: Tensor) -> Tensor:
    return F.linear(x, module.weight, module.bias)


def embedding(
    emb: TensorEmbeddingParams,
    config: ModelConfig,
    z: Tensor,
    edge_index: Tensor,
    unit_vec: Tensor,
    phi: Tensor,
    rbf: Tensor,
) -> Tensor:
    """X^0 [N, 3, 3, F] (docs/spec.md "Embedding")."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    n, f = z.shape[0], config.embedding_dimension
    i, j = edge_index
    atom_emb = emb.emb.weight[z]  # [N, F]
    z_pair = _linear(
        emb.emb2, torch.cat((atom_emb.index_select(0, i), atom_emb.index_select(0, j)), -1)
    )
    c = phi[:, None] * z_pair
    f_i = _linear(emb.distance_proj1, rbf) * c  # [E, F]
    f_a = _linear(emb.distance_proj2, rbf) * c
    f_s = _linear(emb.distance_proj3, rbf) * c
    outer = unit_vec[:, :, None] * unit_vec[:, None, :]  # [E, 3, 3]
    traceless = outer - (unit_vec * unit_vec).sum(-1)[:, None, None] / 3 * torch.eye(
        3, dtype=outer.dtype, device=outer.device
    )
    i_agg = torch.zeros(n, f, dtype=rbf.dtype, device=rbf.device).index_add(0, i, f_i)
    a_vec = torch.zeros(n, 3, f, dtype=rbf.dtype, device=rbf.device).index_add(
        0, i, f_a[:, None, :] * unit_vec[:, :, None]
    )
    s_agg = torch.zeros(n, 3, 3, f, dtype=rbf.dtype, device=rbf.device).index_add(
        0, i, f_s[:, None, None, :] * traceless[..., None]
    )
    a_agg = skew(a_vec)
    x = compose(i_agg, a_agg, s_agg)
    norm = F.layer_norm(squared_norm(x), (f,), emb.init_norm.weight, emb.init_norm.bias)
    for lin in emb.linears_scalar:
        norm = act(_linear(lin, norm))
    n_i, n_a, n_s = norm.split(f, dim=-1)  # blocked layout: I | A | S
    w0, w1, w2 = (lin.weight for lin in emb.linears_tensor)
    return compose(
        channel_linear(i_agg, w0) * n_i,
        channel_linear(a_agg, w1) * n_a[:, None, None, :],
        channel_linear(s_agg, w2) * n_s[:, None, None, :],
    )


def interaction(
    layer: InteractionParams,
    config: ModelConfig,
    x: Tensor,
    edge_index: Tensor,
    rbf: Tensor,
    phi: Tensor,
    charge_factor: Tensor,
) -> Tensor:
    """One interaction layer X -> X' (docs/spec.md "Interaction layer")."""
    f = config.embedding_dimension
    i, j = edge_index
    f_i, f_a, f_s = radial_filter(layer, config, rbf, phi).split(f, dim=-1)  # [E, F] each
    x_bar = x / (squared_norm(x) + 1)[:, None, None, :]
    y_i, y_a, y_s = decompose(x_bar)
    w = [lin.weight for lin in layer.linears_tensor]
    y_i, y_a, y_s = channel_linear(y_i, w[0]), channel_linear(y_a, w[1]), channel_linear(y_s, w[2])
    y = compose(y_i, y_a, y_s)
    n = x.shape[0]
    m_i = torch.zeros_like(y_i).index_add(0, i, f_i * y_i.index_select(0, j))
    m_a = torch.zeros_like(y_a).index_add(0, i, f_a[:, None, None, :] * y_a.index_select(0, j))
    m_s = torch.zeros_like(y_s).index_add(0, i, f_s[:, None, None, :] * y_s.index_select(0, j))
    m = compose(m_i, m_a, m_s)
    assert m.shape[0] == n
    q4 = charge_factor[:, None, None, None]
    if config.equivariance_invariance_group == "O(3)":
        b = q4 * (matmul3(m, y) + matmul3(y, m))
    else:
        b = 2 * matmul3(y, m)
    scale = (squared_norm(b) + 1)[:, None, None, :]
    b_i, b_a, b_s = decompose(b / scale)
    dx = compose(channel_linear(b_i, w[3]), channel_linear(b_a, w[4]), channel_linear(b_s, w[5]))
    return x_bar + dx + q4 * matmul3(dx, dx)


def atomic_features(rep: RepresentationParams, config: ModelConfig, x: Tensor) -> Tensor:
    """x = [3 I^2, |A|^2, |S|^2] -> LayerNorm -> sigma(linear)  [N, F] (no sigma for models
    without ``linear_activation``: matgl's)."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    i, a, s = decompose(x)
    feats = torch.cat((3 * i * i, squared_norm(a), squared_norm(s)), dim=-1)
    feats = F.layer_norm(
        feats, (3 * config.embedding_dimension,), rep.out_norm.weight, rep.out_norm.bias
    )
    h = _linear(rep.linear, feats)
    return act(h) if config.linear_activation else h


def atomic_energies(
    rep: RepresentationParams,
    output_model: torch.nn.Module,
    config: ModelConfig,
    z: Tensor,
    edge_index: Tensor,
    edge_vec: Tensor,
    edge_dist: Tensor,
    charge_factor: Tensor,
) -> Tensor:
    """The model's per-atom output epsilon_i [N, 1] (before std, priors and reduction);
    ``output_model`` holds the Scalar head or the gated readout (``config.readout``)."""
    # Self-loops have d = 0 exactly (coincident distinct atoms are rejected before); an atom's
    # own periodic image (i == j, lattice shift != 0) is an ordinary edge.
    is_self = edge_dist == 0
    safe_dist = torch.where(is_self, torch.ones_like(edge_dist), edge_dist)
    unit_vec = torch.where(
        is_self[:, None], torch.zeros_like(edge_vec), edge_vec / safe_dist[:, None]
    )
    rbf = radial_basis(rep, config, edge_dist)
    phi = cosine_cutoff(edge_dist, config.cutoff_lower, config.cutoff_upper)
    x = embedding(rep.tensor_embedding, config, z, edge_index, unit_vec, phi, rbf)
    for layer in rep.layers:
        x = interaction(layer, config, x, edge_index, rbf, phi, charge_factor)
    return output_head(output_model, config, atomic_features(rep, config, x))


__all__ = ["atomic_energies", "embedding", "interaction", "radial_filter", "identity_part"]
