"""Node-level pieces of TensorNet in the compressed layout, with plain autograd: the embedding's
combine step (docs/spec.md "Embedding" steps 4-5) and the output head ("Output and energy").
Used by the cpu backend's torch path and by the triton backend, whose kernels cover the edge
passes and 3x3 products only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...model.config import ModelConfig
from .layout import sq_norm
from .radial import ACTIVATION_FUNCTIONS, output_head


def embedding_combine(rep, config: ModelConfig, raw: Tensor) -> Tensor:
    """X^0 from the raw embedding sums R [N, 9, F] (docs/spec.md "Embedding" steps 4-5),
    autograd."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    f_dim = config.embedding_dimension
    emb = rep.tensor_embedding
    norm = F.layer_norm(sq_norm(raw), (f_dim,), emb.init_norm.weight, emb.init_norm.bias)
    for lin in emb.linears_scalar:
        norm = act(F.linear(norm, lin.weight, lin.bias))
    n_i, n_a, n_s = norm[:, None, :].split(f_dim, dim=-1)  # [N, 1, F] each
    w = [lin.weight for lin in emb.linears_tensor]
    return torch.cat(
        (raw[:, :1] @ w[0].t() * n_i, raw[:, 1:4] @ w[1].t() * n_a, raw[:, 4:] @ w[2].t() * n_s), 1
    )


def output_energies(model, x: Tensor) -> Tensor:
    """epsilon_i [N, 1] from the final X [N, 9, F] (docs/spec.md "Output and energy"), autograd."""
    config, rep = model.config, model.representation_model
    act = ACTIVATION_FUNCTIONS[config.activation]
    feats = torch.cat((x[:, 0] * x[:, 0], sq_norm(x[:, 1:4]), sq_norm(x[:, 4:])), 1)
    f3 = 3 * config.embedding_dimension
    feats = F.layer_norm(feats, (f3,), rep.out_norm.weight, rep.out_norm.bias)
    h = F.linear(feats, rep.linear.weight, rep.linear.bias)
    if config.linear_activation:
        h = act(h)
    return output_head(model.output_model, config, h)
