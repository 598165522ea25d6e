"""The Triton backend (``backend="triton"``): TensorNet's forward and force backward on fused
Triton kernels (kernels/), in the compressed [N, 9, F] layout (``backends.shared.layout``).

Kernels (each a ``torch.library.custom_op`` with a fake implementation and autograd):

* ``kernels/radial_filter.py``: the filter MLPs (embedding projection and every layer's
  K -> F -> 2F -> 3F) with their d-derivatives, once per DISTINCT distance (exact mode), or the
  tabulated mode's quintic Hermite tables (``backends.shared.tables``, the same tables as the cpu
  backend's, evaluated inside the edge kernels);
* ``kernels/edge_passes.py``: the embedding and message passes as CSR segment reductions over the
  receiver-sorted radius graph (no per-edge [E, 9, F] tensor), and their force backward per edge;
* ``kernels/tensor_products.py``: the per-atom 3x3 products with the normalisation, and the
  update X_bar + dX + q dX dX, forward and backward.

Dense node-level pieces stay in PyTorch: channel linears are GEMMs ([N * k, F] x [F, F], cuBLAS),
LayerNorms and the small output MLP. Positions enter through d (``nl.edge_dist``) and the
per-edge geometry factors of r_hat [E, 9]; autograd carries dE/dd and dE/dgeo back to positions.

The kernels need CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` (how CI tests them).
This backend is for inference (energies, forces, stress); training mode uses the reference math.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from ...model.config import ModelConfig
from ..base import Backend
from ..shared.cache import derived
from ..shared.layout import BLOCK, block_linear, embedding_geometry, sq_norm
from ..shared.node_ops import embedding_combine, embedding_scalars, output_energies
from ..shared.tables import filter_tables

_MODULES: dict = {}
# Eager calls use the memory plan's autograd Functions (docs/gpu.md "Memory plan"); False: plain
# autograd everywhere (bench/memory_plan.py --plain and the tests compare the two).
LEAN_BACKWARD = True


def load_kernels():
    """The kernel modules, imported on first use (importing Triton costs ~1 s)."""
    if not _MODULES:
        from ...kernels import edge_passes, radial_filter, tensor_products

        _MODULES.update(edges=edge_passes, filt=radial_filter, prod=tensor_products)
    return _MODULES


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supports_device(device: torch.device) -> bool:
    """Whether the kernels can run on tensors of this device here."""
    return device.type == "cuda" or (device.type == "cpu" and interpreter_active())


# ----------------------------------------------------------------------------- per-model state
def filter_weights(model) -> list:
    """Padded filter parameters per radial filter (embedding first, then each layer), rebuilt
    when the weights change."""
    rep, config = model.representation_model, model.config
    fw = load_kernels()["filt"].FilterWeights
    return derived(
        model,
        "triton_filter_weights",
        lambda: (
            [fw(rep, None, config, model.dtype, model.device)]
            + [fw(rep, layer, config, model.dtype, model.device) for layer in rep.layers]
        ),
    )


def splines(model) -> list[tuple[Tensor, float, float]]:
    """(coefficients [n, 6, 3F] on the model's device, lower bound, 1/h) per radial filter:
    the shared tables (``shared.tables.filter_tables``), rebuilt when the weights change."""

    def build():
        return [(sp.coef.to(model.device), sp.lo, 1.0 / sp.h) for sp in filter_tables(model)]

    return derived(model, "triton_tables", build)


class _Filters:
    """Kernel arguments (tab, dtab, idx, lo, inv_h, tabulated) per radial filter for one graph."""

    def __init__(self, model, d: Tensor, deriv: bool, static: bool = False):
        self.args = []
        empty_idx = torch.zeros(0, dtype=torch.int64, device=d.device)
        if model.filter_mode == "tabulated":
            for coef, lo, inv_h in splines(model):
                self.args.append((coef, coef, empty_idx, lo, inv_h, True))
            return
        if static or torch.compiler.is_compiling():
            # torch.unique has a data-dependent size (a host sync): when tracing or capturing
            # a CUDA graph, evaluate the filters per edge instead.
            d_unique, inverse = d, torch.arange(d.shape[0], device=d.device)
        else:
            # d_ij == d_ji bitwise, so the distinct distances are at most one per unordered pair.
            d_unique, inverse = torch.unique(d, return_inverse=True)
        radial_filter = load_kernels()["filt"].radial_filter
        lo = float(model.config.cutoff_lower)
        for w in filter_weights(model):
            tab, dtab = radial_filter(d_unique, w, deriv)
            self.args.append((tab, dtab if deriv else tab, inverse, lo, 1.0, False))


def _pair_table(emb, z: Tensor) -> tuple[Tensor, Tensor, int]:
    """emb2([emb(z_a); emb(z_b)]) for the species present [S*S, F], and each atom's species."""
    species, zidx = torch.unique(z, return_inverse=True)
    return _pairs(emb, emb.emb.weight[species]), zidx, species.shape[0]


def _full_pair_table(emb) -> Tensor:
    """emb2([emb(a); emb(b)]) for every element pair [max_z * max_z, F]."""
    return _pairs(emb, emb.emb.weight)


def _pairs(emb, atom: Tensor) -> Tensor:
    s = atom.shape[0]
    both = torch.cat((atom.repeat_interleave(s, 0), atom.repeat(s, 1)), 1)  # [S*S, 2F]
    return F.linear(both, emb.emb2.weight, emb.emb2.bias)


# ----------------------------------------------------------------------------- the model
def atomic_energies(model, z: Tensor, nl, charge_factor: Tensor, static: bool = False) -> Tensor:
    """Per-atom output epsilon_i [N, 1], like ``reference.atomic_energies``.

    ``static=True`` (set by the model's assembly for torch.compile / export / CUDA graphs,
    and implied while torch.compile traces): no host synchronisation and shapes that depend only
    on input shapes (filters per edge instead of per distinct distance, the element-pair table
    over every element instead of the species present). Same numbers either way."""
    static = static or torch.compiler.is_compiling()
    edges = load_kernels()["edges"]
    config: ModelConfig = model.config
    rep = model.representation_model

    d = nl.edge_dist  # [E], differentiable; exactly 0 on self-loops
    vec = nl.edge_vec
    row_ptr = nl.row_ptr.contiguous()
    row, col = nl.edge_index[0].contiguous(), nl.edge_index[1].contiguous()
    not_self = (d != 0).to(d.dtype)[:, None]
    safe = torch.where(d != 0, d, torch.ones_like(d))[:, None]
    rhat = vec / safe * not_self  # [E, 3], 0 on self-loops
    geo = embedding_geometry(rhat).contiguous()  # [E, 9]
    deriv = torch.is_grad_enabled() and d.requires_grad
    with torch.no_grad():
        filters = _Filters(model, d.detach(), deriv, static)

    emb = rep.tensor_embedding
    if static:  # static shapes: the table over every element
        ztab, zidx, n_species = _full_pair_table(emb), z, emb.emb.weight.shape[0]
    else:
        ztab, zidx, n_species = _pair_table(emb, z)
    ztab = ztab.detach().contiguous()
    pair = (zidx[row] * n_species + zidx[col]).contiguous()  # [E] row of ztab
    tab, dtab, idx, lo, inv_h, tabulated = filters.args[0]
    raw = edges.embed(geo, d, pair, ztab, row_ptr, row, tab, dtab, idx, lo, inv_h, tabulated)
    q = charge_factor.to(raw.dtype).contiguous()  # [N]
    o3 = config.equivariance_invariance_group == "O(3)"
    if static or not LEAN_BACKWARD:
        # torch.compile / export / CUDA graphs (small systems): plain autograd, which Dynamo
        # traces; the memory plan's Functions below call torch.autograd.grad in a backward,
        # which Dynamo refuses with fullgraph=True. Same operations, so the same numbers.
        return _plain_layers(model, raw, d, q, row_ptr, row, col, filters, o3)
    x = _EmbeddingCombine.apply(raw, model)  # [N, 9, F]
    for layer, (tab, dtab, idx, lo, inv_h, tabulated) in zip(rep.layers, filters.args[1:]):
        wt = _gemm_weights(lin.weight for lin in layer.linears_tensor)
        x = _Interaction.apply(x, d, q, row_ptr, row, col, tab, dtab, idx, *wt,
                               (lo, inv_h, tabulated, o3))  # fmt: skip
    return output_energies(model, x, frozen=True, block_sq_norms=_BlockSqNorms.apply)


def _plain_layers(model, raw, d, q, row_ptr, row, col, filters, o3: bool) -> Tensor:
    """The node-level steps under plain autograd (traceable; saves every activation)."""
    edges, prod = _MODULES["edges"], _MODULES["prod"]
    rep = model.representation_model
    x = embedding_combine(rep, model.config, raw)  # [N, 9, F]
    for layer, (tab, dtab, idx, lo, inv_h, tabulated) in zip(rep.layers, filters.args[1:]):
        wt = [lin.weight for lin in layer.linears_tensor]
        x_bar = x / (sq_norm(x) + 1)[:, None, :]
        y = block_linear(x_bar, wt[0], wt[1], wt[2])
        m = edges.message(y, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabulated)
        dx = block_linear(prod.product(y, m, q, o3), wt[3], wt[4], wt[5])  # product normalised
        x = prod.update(x_bar, dx, q)
    return output_energies(model, x)


# ----------------------------------------------------------------------------- memory plan
# The node-level steps as autograd Functions with hand-written backwards that save few
# [N, 9, F] tensors (4.6 KB per atom each at F = 128, float32) and never materialise the
# full-size zero gradients of slices (x[:, 1:4] under plain autograd makes one per slice).
# 1M water atoms (r_c = 5, 2 layers) then fit in 80 GB in tabulated mode: docs/gpu.md
# "Memory plan" (measured on CPU by bench/memory_plan.py).
def _gemm_weights(weights) -> list[Tensor]:
    """Channel-linear weights for ``block_linear`` inside the Functions below: the parameters
    themselves, not detached. torch.matmul folds [N, k, F] @ [F, F] into one GEMM on a copy
    when the weight requires grad and takes a batched path with other rounding when it does
    not; so the forward stays bitwise the plain-autograd path's (tests compare with torchmd-net
    at float32 noise level). Nothing is recorded for them: grad mode is off inside a Function's
    forward and backward, and the backward returns no weight gradients."""
    return list(weights)


def _expand3(t: Tensor) -> Tensor:
    """[N, 3F] (I | A | S) -> [N, 9, F] per component."""
    return t.view(t.shape[0], 3, -1)[:, BLOCK.to(t.device)]


def _block_sums(t: Tensor) -> Tensor:
    """Sum of the components of each block.  [N, 9, F] -> [N, 3F] (I | A | S)"""
    return torch.cat((t[:, 0], t[:, 1:4].sum(1), t[:, 4:].sum(1)), 1)


class _BlockSqNorms(torch.autograd.Function):
    """[I^2 | ||A||^2 | ||S||^2] [N, 3F] of X [N, 9, F] (the output head's features); the
    backward writes 2 X dE/dfeat into one buffer."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        # the same operations as plain autograd's (shared node_ops), so the same rounding
        return torch.cat((x[:, 0] * x[:, 0], sq_norm(x[:, 1:4]), sq_norm(x[:, 4:])), 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _expand3(g.contiguous()).mul_(x).mul_(2.0)


class _EmbeddingCombine(torch.autograd.Function):
    """X^0 = (W_blk R) * n_blk(||R||^2) from the raw embedding sums R [N, 9, F] (spec
    "Embedding" steps 4-5). Saves R and ||R||^2 [N, F] only: the backward recomputes W R (one
    GEMM per block) and the scales n [N, 3F] (LayerNorm + scalar MLP, by autograd)."""

    @staticmethod
    def forward(ctx, raw, model):
        rep, config = model.representation_model, model.config
        sq = sq_norm(raw)
        n = embedding_scalars(rep, config, sq)
        w = _gemm_weights(lin.weight for lin in rep.tensor_embedding.linears_tensor)
        x = block_linear(raw, *w).mul_(_expand3(n))
        ctx.save_for_backward(raw, sq)
        ctx.model = model
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        raw, sq = ctx.saved_tensors
        rep, config = ctx.model.representation_model, ctx.model.config
        w = _gemm_weights(lin.weight for lin in rep.tensor_embedding.linears_tensor)
        g = g.contiguous()
        with torch.enable_grad():
            sq_leaf = sq.detach().requires_grad_(True)
            n = embedding_scalars(rep, config, sq_leaf)  # [N, 3F], as in the forward
        # dE/dn: per block, the sum over its components of g * (W R)
        g_n = _block_sums(block_linear(raw, *w).mul_(g))
        (g_sq,) = torch.autograd.grad(n, sq_leaf, g_n)
        # dE/dR = W^T (g * n) + 2 R dE/d||R||^2
        g_raw = block_linear(_expand3(n.detach()).mul_(g), w[0].t(), w[1].t(), w[2].t())
        return g_raw.addcmul_(raw, g_sq[:, None, :], value=2.0), None


class _Interaction(torch.autograd.Function):
    """One interaction layer, X [N, 9, F] -> X_new, with a backward that keeps 3 of its 7
    [N, 9, F] activations (docs/gpu.md "Memory plan").

    Forward: X_bar = X / (||X||^2 + 1), Y = W_{0,1,2} X_bar, M = message(Y), B = product(Y, M),
    dX = W_{3,4,5} B, X_new = update(X_bar, dX). Saved: X, Y and M (M costs an edge pass).
    Recomputed in the backward: X_bar (elementwise), B (the product kernel) and dX (one GEMM per
    block). The weights are constants (inference: no weight gradients), so the GEMMs' backward
    needs no saved input either. Per layer that is 3 x 4.6 KB per atom at F = 128 in float32
    instead of 7 (plain autograd also kept X_bar, B, dX and the GEMMs' inputs)."""

    @staticmethod
    def forward(ctx, x, d, q, row_ptr, row, col, tab, dtab, idx, w0, w1, w2, w3, w4, w5, consts):
        edges, prod = _MODULES["edges"], _MODULES["prod"]
        lo, inv_h, tabulated, o3 = consts
        x_bar = x / (sq_norm(x) + 1)[:, None, :]
        y = block_linear(x_bar, w0, w1, w2)
        m = edges.message(y, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabulated)
        dx = block_linear(prod.product(y, m, q, o3), w3, w4, w5)
        out = prod.update(x_bar, dx, q)
        ctx.save_for_backward(x, y, m, d, q, row_ptr, row, col, tab, dtab, idx,
                              w0, w1, w2, w3, w4, w5)  # fmt: skip
        ctx.consts = consts
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        edges, prod = _MODULES["edges"], _MODULES["prod"]
        x, y, m, d, q, row_ptr, row, col, tab, dtab, idx, w0, w1, w2, w3, w4, w5 = ctx.saved_tensors
        lo, inv_h, tabulated, o3 = ctx.consts
        g = g.contiguous()
        # Live [N, 9, F] buffers are counted in the comments (besides X, Y, M and g): at most 3.
        dx = block_linear(prod.product(y, m, q, o3), w3, w4, w5)  # 1 (B freed)
        g_b = prod.update_backward(dx, q, g)  # dE/d(dX)
        del dx
        g_b = block_linear(g_b, w3.t(), w4.t(), w5.t())  # dE/dB: the GEMMs' transpose; 1
        g_y, g_m = prod.product_backward(y, m, q, g_b, o3)  # 2
        del g_b
        g_d = None
        if ctx.needs_input_grad[1]:
            g_d = edges.message_backward(y, g_m, d, row, col, tab, dtab, idx, lo, inv_h,
                                         tabulated)  # [E]  # fmt: skip
        # the graph is symmetric with f_ij = f_ji: dE/dY += the message pass of dE/dM; 3
        g_y += edges.message(g_m, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabulated)
        del g_m
        # dE/dX_bar = g (the update's identity term) + W_{0,1,2}^T dE/dY; 1
        g_x = block_linear(g_y, w0.t(), w1.t(), w2.t()).add_(g)
        del g_y
        # X_bar = X / s, s = ||X||^2 + 1 per atom and channel:
        # dE/dX = g_bar / s - 2 X (g_bar . X) / s^2, in place
        s = sq_norm(x) + 1  # [N, F]
        coef = (g_x * x).sum(1) / (s * s)  # [N, F]
        g_x.div_(s[:, None, :]).addcmul_(x, coef[:, None, :], value=-2.0)
        return (g_x, g_d) + (None,) * 14


class TritonBackend(Backend):
    name = "triton"
    traceable = True
    filter_modes = ("exact", "tabulated")

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        # find_spec, not import: importing Triton costs ~1 s and only this backend needs it
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install 'tensornet-fast[triton]')"
        if interpreter_active() or torch.cuda.is_available():
            return None
        return "no CUDA device (set TRITON_INTERPRET=1 to run its kernels on CPU, slowly)"

    def runs_on(self, device: torch.device) -> bool:
        return supports_device(device)

    def prepare(self, model) -> None:
        load_kernels()
        if model.filter_mode == "tabulated":
            splines(model)
        else:
            filter_weights(model)

    def atomic_energies(self, model, z: Tensor, nl, charge_factor: Tensor, *, static=False):
        return atomic_energies(model, z, nl, charge_factor, static=static)
