"""The cpu backend's traceable path (``atomic_energies(..., static=True)``): the same compiled
kernels and hand-written backward as an eager call, with every data-dependent step replaced by
one whose shapes follow the inputs' alone, so ``make_fx`` / ``torch.export`` record the ops
themselves (each has a fake kernel, backends/cpu/fakes.py) and an AOTInductor package calls
them from C++ (md/export.py, the LAMMPS pair style):

* filters: the tabulated ones (``backends.shared.tables``; constants derived from the weights),
  each edge located on their grid by ``cpu_spline_locate``, instead of the exact filter MLP
  once per distinct distance (``torch.unique``, a data-dependent count);
* element pairs: the full table over every atom type of the model, [max_z * max_z, F] (18
  types, F = 48: 62 KB; 100 types, F = 128: 5 MB), indexed z_i * max_z + z_j, instead of a
  table over the species present (``torch.unique``);
* the network: ``fused._FusedModel``, whose forward and backward make_fx traces as calls of
  the compiled ops (its Python bookkeeping runs at trace time only). Stacked / packed weights
  and tables enter the graph as constants.

Edges may lie beyond the cutoff (a LAMMPS list up to a pair prior's larger cutoff, padding):
their grid index is set to -1, which the kernels read as a zero filter, so they add exact zeros
(a table evaluated past its last node would give ~1e-14 instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import NotTraceable
from ..shared.cache import derived, tracing, weights_key
from ..shared.tables import filter_tables
from .filters import TabulatedFilter
from .fused import _FusedModel, prepared
from .graph import Graph


class _StaticGraph(Graph):
    """Graph whose edges at d >= the table's end get the zero filter (index -1)."""

    def spline_coordinates(self, spline):
        key = (spline.lo, spline.h, spline.n, spline.zero_below)
        if key not in self._located:
            args = (self.d, spline.lo, spline.h, spline.n, spline.zero_below)
            k, s = self._ops.cpu_spline_locate(*args)
            k = torch.where(self.d < spline.hi, k, torch.full_like(k, -1))
            self._located[key] = (k.contiguous(), s.contiguous())
        return self._located[key]


def full_pair_table(model, key: tuple | None = None) -> Tensor:
    """emb2([emb(a); emb(b)]) for every pair of atom types (a, b) of the model: [max_z^2, F],
    row a * max_z + b, detached; rebuilt when the weights change."""

    def build() -> Tensor:
        emb = model.representation_model.tensor_embedding
        with torch.no_grad():
            atom = emb.emb.weight  # [max_z, F]
            n = atom.shape[0]
            both = torch.cat((atom.repeat_interleave(n, 0), atom.repeat(n, 1)), 1)  # [n*n, 2F]
            return F.linear(both, emb.emb2.weight, emb.emb2.bias).contiguous()

    return derived(model, "cpu_full_pair_table", build, key)


def prepare(model, ops) -> None:
    """Build the derived state now, from the real weights: inside a make_fx trace the builders
    would run on fake tensors and record ops instead of constants."""
    key = weights_key(model)
    filter_tables(model, key)
    full_pair_table(model, key)
    prepared(model, ops, key)


def check_static(model) -> None:
    """Raise NotTraceable when the model asks for what this path cannot trace."""
    if model.filter_request == "exact":
        raise NotTraceable(
            "the cpu backend's traced path uses the tabulated filters (the exact ones are "
            "evaluated once per distinct distance, a data-dependent count); load the model with "
            "filter_mode='auto' or 'tabulated', or use backend='reference'"
        )


def atomic_energies(model, ops, z: Tensor, nl, charge_factor: Tensor) -> Tensor:
    """epsilon_i [N, 1] through the compiled kernels, traceable (see the module docstring)."""
    check_static(model)
    key = None if tracing() else weights_key(model)  # traced: prepare() built the state
    g = _StaticGraph(nl, z.shape[0], ops)
    filters = [TabulatedFilter(s, g) for s in filter_tables(model, key)]
    ztab = full_pair_table(model, key)
    max_z = model.representation_model.tensor_embedding.emb.weight.shape[0]
    pair = z.index_select(0, g.i) * max_z + z.index_select(0, g.j)  # [E] row of ztab
    prep = prepared(model, ops, key)
    q = charge_factor.detach().to(nl.edge_vec.dtype).contiguous()
    return _FusedModel.apply(nl.edge_vec, prep, g, filters, ztab, pair, q)
