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


def _w(t: Tensor, frozen: bool) -> Tensor:
    # frozen: the weights as constants, so autograd saves no activation for weight gradients
    # (a GEMM whose weight needs no gradient keeps only the weight for the input's gradient)
    return t.detach() if frozen else t


def embedding_combine(rep, config: ModelConfig, raw: Tensor, frozen: bool = False) -> Tensor:
    """X^0 from the raw embedding sums R [N, 9, F] (docs/spec.md "Embedding" steps 4-5),
    autograd; ``frozen``: no gradients for the weights (inference)."""
    f_dim = config.embedding_dimension
    emb = rep.tensor_embedding
    norm = embedding_scalars(rep, config, sq_norm(raw), frozen)
    n_i, n_a, n_s = norm[:, None, :].split(f_dim, dim=-1)  # [N, 1, F] each
    w = [_w(lin.weight, frozen) for lin in emb.linears_tensor]
    return torch.cat(
        (raw[:, :1] @ w[0].t() * n_i, raw[:, 1:4] @ w[1].t() * n_a, raw[:, 4:] @ w[2].t() * n_s), 1
    )


def embedding_scalars(rep, config: ModelConfig, sq: Tensor, frozen: bool = False) -> Tensor:
    """The embedding's per-channel scales [N, 3F] (blocked I | A | S) from ||R||^2 [N, F]:
    LayerNorm, then the scalar MLP."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    emb = rep.tensor_embedding
    norm = F.layer_norm(sq, (config.embedding_dimension,), _w(emb.init_norm.weight, frozen),
                        _w(emb.init_norm.bias, frozen))  # fmt: skip
    for lin in emb.linears_scalar:
        norm = act(F.linear(norm, _w(lin.weight, frozen), _w(lin.bias, frozen)))
    return norm


def _block_sq_norms(x: Tensor) -> Tensor:
    """[I^2 | ||A||^2 | ||S||^2] per channel.  [N, 9, F] -> [N, 3F]"""
    return torch.cat((x[:, 0] * x[:, 0], sq_norm(x[:, 1:4]), sq_norm(x[:, 4:])), 1)


def output_energies(model, x: Tensor, frozen: bool = False, block_sq_norms=None) -> Tensor:
    """epsilon_i [N, 1] from the final X [N, 9, F] (docs/spec.md "Output and energy"), autograd;
    ``frozen``: no gradients for the weights (inference); ``block_sq_norms``: a replacement for
    the features' computation (the triton backend's, with a leaner backward)."""
    config, rep = model.config, model.representation_model
    act = ACTIVATION_FUNCTIONS[config.activation]
    feats = block_sq_norms(x) if block_sq_norms else _block_sq_norms(x)
    f3 = 3 * config.embedding_dimension
    feats = F.layer_norm(feats, (f3,), _w(rep.out_norm.weight, frozen),
                         _w(rep.out_norm.bias, frozen))  # fmt: skip
    h = F.linear(feats, _w(rep.linear.weight, frozen), _w(rep.linear.bias, frozen))
    if config.linear_activation:
        h = act(h)
    return output_head(model.output_model, config, h, frozen)
