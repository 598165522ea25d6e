"""The fast CPU backend (``backend="cpu"``): the same numbers as the reference math, restructured.

Levers (docs/spec.md "Where the cost is"):

* Every 3x3 tensor is 9 coefficients in an orthonormal basis (``backends.shared.layout``): the
  I/A/S split is a slice, a channel linear is one GEMM per block on [N * k, F], nothing is
  stored 3x3 with redundancy.
* The radial filters depend on d alone (``filters.py``). ``exact`` mode evaluates the MLP and
  its d-derivative once per DISTINCT distance (at most once per unordered pair); ``tabulated``
  mode evaluates the shared quintic Hermite tables per edge in the kernels; forces use the
  spline's own derivative, so energy is conserved.
* Messages are segment reductions over edges sorted by receiver; per-edge tensors exist only
  for a chunk of edges (torch path, ``torch_passes.py``) or in registers (compiled path).
* Forces: a hand-written backward for the edge passes (docs/spec.md "The shape of the force
  backward"). With the compiled extension the whole network from edge_vec to epsilon_i is ONE
  autograd node (``fused.py``): the edge passes, one op per interaction layer (one parallel
  region with one barrier per direction), the embedding's combine step, the squared norms and
  the per-atom LayerNorm + MLP stacks of the embedding and the output head.

``filter_mode`` "auto" (load_model's default) is "tabulated" for float32 models whose tables pass
their ``TableCheck`` (no error above the float32 rounding of the exact filter), else "exact"
(with one warning naming the errors), and "exact" in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import NotTraceable
from ..base import Backend, warn_once
from ..shared.cache import derived, weights_key
from ..shared.radial import gated_head
from ..shared.tables import filter_tables
from . import torch_passes
from .filters import make_filters
from .fused import _FusedModel, fused_backward, fused_forward, prepared
from .graph import Graph
from .ops import compiled_ops, stage
from .static import atomic_energies as static_atomic_energies
from .static import prepare as static_prepare
from .threads import threads_for


class CpuBackend(Backend):
    """``use_extension=False`` runs the chunked-PyTorch path even where the compiled kernels
    are built (same numbers within rounding, slower; the tests compare the two).
    ``traceable=True``: traced calls (``static=True``) run the compiled kernels through
    ``static.py`` (what export and the LAMMPS package use) instead of the reference math. Off by
    default: ``compile_model`` (Dynamo) is not tested on it."""

    name = "cpu"
    filter_modes = ("exact", "tabulated")

    def __init__(self, explicit: bool = True, use_extension: bool = True, traceable: bool = False):
        super().__init__(explicit)
        self.use_extension = use_extension
        self.traceable = traceable  # shadows the class's False for this instance

    def ops(self):
        return compiled_ops() if self.use_extension else None

    def runs_on(self, device: torch.device) -> bool:
        return device.type == "cpu"

    def resolve_filter_mode(self, model, requested: str, key: tuple | None = None) -> str:
        if requested != "auto":
            return requested
        if model.dtype != torch.float32:
            return "exact"
        # once per state of the weights (~90 us per call on the loaded 2-core VM otherwise)
        return derived(model, "cpu_auto_filter_mode", lambda: self._auto_mode(model, key), key)

    def _auto_mode(self, model, key: tuple | None) -> str:
        tables = filter_tables(model, key)
        failed = [s.check for s in tables if not s.check.within_fp32_rounding]
        if not failed:
            return "tabulated"
        c = failed[0]
        warn_once(
            "auto-filter-exact",
            "filter_mode 'auto' uses the exact filters: a tabulated filter of this model is off "
            f"by {c.value_error:.1e} (values) / {c.derivative_error:.1e} (derivatives), above "
            f"the float32 rounding of the exact filter ({c.fp32_value_error:.1e} / "
            f"{c.fp32_derivative_error:.1e}; relative to the largest value / derivative)",
        )
        return "exact"

    def threads(self, n_atoms: int):
        """One thread below ``threads.SMALL_SYSTEM_ATOMS`` atoms, no more threads than free
        cores on a busy machine (``backends/cpu/threads.py``)."""
        return threads_for(n_atoms)

    def prepare(self, model) -> None:
        if self.traceable and self.ops() is not None:
            static_prepare(model, self.ops())
        elif model.filter_mode == "tabulated":
            filter_tables(model)

    def atomic_energies(self, model, z: Tensor, nl, charge_factor: Tensor, *, static=False):
        ops = self.ops()
        if static:
            if not self.traceable or ops is None:
                raise NotTraceable(
                    "this cpu backend has no traced path: CpuBackend(traceable=True) with the "
                    "compiled extension built"
                )
            return static_atomic_energies(model, ops, z, nl, charge_factor)
        deriv = torch.is_grad_enabled() and nl.edge_vec.requires_grad
        g, filters, ztab, pair, key = self._edges(model, z, nl, ops, deriv)
        if ops is None:
            return torch_passes.atomic_energies(
                model, g, filters, ztab, pair, nl.edge_vec, charge_factor
            )
        prep = prepared(model, ops, key)
        q = charge_factor.detach().to(nl.edge_vec.dtype).contiguous()
        out = _FusedModel.apply(nl.edge_vec, prep, g, filters, ztab, pair, q)
        if prep.gated:  # matgl's gated readout, autograd (fused.Prepared)
            return gated_head(model.output_model.gated, out)
        return out

    def direct_forces(self, model) -> bool:
        """The compiled path with the Scalar head (base.Backend.direct_forces)."""
        return self.use_extension and compiled_ops() is not None and model.config.readout != "gated"

    def atomic_energies_vjp(self, model, z: Tensor, nl, charge_factor: Tensor):
        """(epsilon_i [N, 1], g_eps -> dE/d(edge_vec) [E, 3]) without autograd: the same
        fused_forward / fused_backward as the autograd node, called directly. One 22-atom step
        records no graph and skips the engine and the edge-vector nodes (docs/performance.md
        section 11)."""
        ops = self.ops()
        g, filters, ztab, pair, key = self._edges(model, z, nl, ops, True)
        prep = prepared(model, ops, key)
        q = charge_factor.detach().to(nl.edge_vec.dtype).contiguous()
        eps, tapes = fused_forward(prep, g, filters, ztab, pair, q)
        return eps, lambda g_eps: fused_backward(prep, g, filters, ztab, pair, q, tapes, g_eps)

    def _edges(self, model, z: Tensor, nl, ops, deriv: bool):
        """(Graph, filters, pair table [S*S, F], row of each edge in it [E], weights key)."""
        key = weights_key(model)
        g = Graph(nl, z.shape[0], ops)
        mode = self.resolve_filter_mode(model, model.filter_request, key)
        with stage("filters"):
            filters = make_filters(model, mode, g, deriv, ops, key)
        ztab, zidx, n_species = pair_table(model, z, key)
        # [E] row of ztab; index_select, not zidx[g.i]: advanced indexing opened a parallel
        # region for 3.8k edges (64 g2 molecules: 158 us -> 41 us for the pair, thread wake-up
        # included)
        pair = zidx.index_select(0, g.i) * n_species + zidx.index_select(0, g.j)
        return g, filters, ztab, pair, key


def pair_table(model, z: Tensor, key: tuple | None = None) -> tuple[Tensor, Tensor, int]:
    """(emb2([emb(a); emb(b)]) over the species present [S*S, F], contiguous and detached;
    each atom's species index [N]; S). One table per set of species, kept until the weights
    change."""
    tables = derived(model, "cpu_pair_tables", dict, key)
    # The same z tensor call after call (MDStep, OpenMM): its species and inverse are kept with
    # a reference to it (so its memory cannot be reused) and its version counter (in-place
    # edits); torch.unique and the host copy of the species were ~40 us of a 22-atom step.
    last = tables.get("last_z")
    if last is not None and last[0] is z and last[1] == z._version:
        species, zidx, species_key = last[2:]
    else:
        species, zidx = torch.unique(z, return_inverse=True)
        species_key = species.numpy().tobytes()
        tables["last_z"] = (z, z._version, species, zidx, species_key)
    ztab = tables.get(species_key)
    if ztab is None:
        emb = model.representation_model.tensor_embedding
        with torch.no_grad():
            atom = emb.emb.weight[species]  # [S, F]
            s = species.shape[0]
            both = torch.cat((atom.repeat_interleave(s, 0), atom.repeat(s, 1)), 1)  # [S*S, 2F]
            ztab = F.linear(both, emb.emb2.weight, emb.emb2.bias).contiguous()
        tables[species_key] = ztab
    return ztab, zidx, species.shape[0]
