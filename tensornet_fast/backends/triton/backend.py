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
from ..shared.layout import block_linear, embedding_geometry, sq_norm
from ..shared.node_ops import embedding_combine, output_energies
from ..shared.tables import filter_tables

_MODULES: dict = {}


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
    k = load_kernels()
    edges, prod = k["edges"], k["prod"]
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
    x = embedding_combine(rep, config, raw)  # [N, 9, F]

    q = charge_factor.to(x.dtype).contiguous()  # [N]
    o3 = config.equivariance_invariance_group == "O(3)"
    for layer, (tab, dtab, idx, lo, inv_h, tabulated) in zip(rep.layers, filters.args[1:]):
        wt = [lin.weight for lin in layer.linears_tensor]
        x_bar = x / (sq_norm(x) + 1)[:, None, :]
        y = block_linear(x_bar, wt[0], wt[1], wt[2])
        m = edges.message(y, d, row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabulated)
        b = prod.product(y, m, q, o3)  # normalised
        dx = block_linear(b, wt[3], wt[4], wt[5])
        x = prod.update(x_bar, dx, q)
    return output_energies(model, x)


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
