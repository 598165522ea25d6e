"""Edges for traced evaluation: a GIVEN edge list (no search inside the graph, or a pure-aten
one), its geometry computed from the positions with no host synchronisation, no data-dependent
Python control flow and fixed shapes for fixed inputs.

``GivenEdges`` is the edge source the model's one assembly (``model.assembly.evaluate``) takes
for the three traced features:
- ``md.compile`` (``torch.compile(fullgraph=True)``; the neighbour list is built eagerly outside
  the compiled region and passed in),
- ``md.export`` (make_fx + torch.export + AOTInductor; the neighbour search is the pure-aten
  :func:`dense_edges` inside the graph),
- ``md.step`` (a fixed-capacity Verlet list whose padded edges have fixed shapes, so the step can
  be captured in a CUDA graph).

Edges may carry MORE pairs than the cutoff (Verlet candidates, padding): every contribution of an
edge is multiplied by the cosine cutoff phi(d), which is exactly 0 (value and gradient) for
d >= cutoff_upper and, with a lower cutoff, for d <= cutoff_lower, so extra edges add exact zeros
and the sums keep their order (edges sorted by receiver). Padding edges (``valid == False``) get
a constant vector of length ``2 * max_cutoff + 1`` that does not depend on the positions (so do
the self-loops of models without them, matgl's: the searches list one per atom). Pair
priors (ZBL, D2) select their pairs with explicit masks. This is what makes the results equal
those of the eager model (which passes exactly the pairs within the cutoff) to rounding.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from torch import Tensor

from ..errors import InputError, NotTraceable
from ..model.assembly import det3, max_cutoff
from ..neighbors import NeighborList, safe_norm


def check_traceable(model, what: str) -> None:
    """Raise ``NotTraceable`` unless the model's backend can run inside a trace, and prepare its
    derived state now, outside the trace (lazy imports and caches filled while Dynamo traces
    are guarded on, and the second call of a compiled model recompiled)."""
    backend = model.backend_impl
    if not backend.traceable:
        raise NotTraceable(
            f"{what} needs a traceable backend (reference, triton); this model uses "
            f"backend={model.backend!r}, whose edge kernels run as host code that cannot be "
            "traced. Load the model with backend='reference' (torch.compile / CUDA graphs then "
            "fuse the reference math themselves) or backend='triton' (CUDA)."
        )
    backend.prepare(model)


@dataclasses.dataclass
class Edges:
    """A (possibly padded, possibly over-complete) edge list sorted by receiver."""

    edge_index: Tensor  # [2, E] int64 (padding slots: any valid atom index)
    shifts: Tensor | None = None  # [E, 3] integer lattice shifts in pos dtype; None: no box
    valid: Tensor | None = None  # [E] bool; None: all edges are real
    row_ptr: Tensor | None = None  # [N + 1] receiver CSR; None: from the receivers


def edge_geometry(
    model, pos: Tensor, batch: Tensor, cell: Tensor | None, edges: Edges
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(edge_vec [E, 3], edge_dist [E], is_self [E], zero_shift [E]) for ``edges``."""
    i, j = edges.edge_index
    vec = pos.index_select(0, i) - pos.index_select(0, j)
    if cell is not None and edges.shifts is not None:
        vec = vec + torch.einsum("ea,eab->eb", edges.shifts, cell.index_select(0, batch[i]))
        zero_shift = (edges.shifts == 0).all(1)
    else:
        zero_shift = torch.ones_like(i, dtype=torch.bool)
    is_self = (i == j) & zero_shift
    valid = edges.valid
    if not model.config.self_loops:
        # A model without self-loops (matgl's) takes a listed self-loop as padding: exact zeros.
        valid = ~is_self if valid is None else valid & ~is_self
    if valid is not None:
        far = torch.zeros(1, 3, dtype=pos.dtype, device=pos.device)
        far[0, 0] = 2.0 * max_cutoff(model) + 1.0
        vec = torch.where(valid[:, None], vec, far)
        is_self = is_self & valid
    return vec, safe_norm(vec, is_self), is_self, zero_shift


class GivenEdges:
    """Edge source of the assembly for traced calls: ``edges`` as they are, for the network and
    the pair priors alike, their geometry from the (strained) positions."""

    def __init__(self, model, batch: Tensor, edges: Edges):
        self.model, self.batch, self.edges = model, batch, edges

    def __call__(self, positions: Tensor, cell: Tensor | None) -> tuple[NeighborList, NeighborList]:
        e = self.edges
        vec, dist, _, _ = edge_geometry(self.model, positions, self.batch, cell, e)
        row_ptr = e.row_ptr
        if row_ptr is None:
            receivers = e.edge_index[0].contiguous()
            n = positions.shape[0]
            row_ptr = torch.searchsorted(receivers, torch.arange(n + 1, device=receivers.device))
        shifts = e.shifts if e.shifts is not None else torch.zeros_like(vec)
        nl = NeighborList(e.edge_index, vec, dist, shifts, row_ptr, e.valid)
        return nl, nl


def inv3(b: Tensor) -> Tensor:
    """Inverse of one [3, 3] cell (rows a, b, c) by its adjugate: columns b x c, c x a, a x b."""
    cols = (
        torch.linalg.cross(b[1], b[2]),
        torch.linalg.cross(b[2], b[0]),
        torch.linalg.cross(b[0], b[1]),
    )
    return torch.stack(cols, dim=1) / det3(b)


def dense_budget_bytes() -> float:
    """Bytes of the brute-force difference tensor of ``dense_edges``: 4 GiB by default."""
    value = os.environ.get("TENSORNET_FAST_DENSE_MAX_GB")
    try:
        return float(value) * 2**30 if value else 4.0 * 2**30
    except ValueError:
        raise InputError(f"TENSORNET_FAST_DENSE_MAX_GB must be a number, got {value!r}") from None


def dense_shifts(periodic: bool, images: int) -> int:
    return (2 * images + 1) ** 3 if periodic else 1


def dense_max_atoms(dtype: torch.dtype, periodic: bool, images: int) -> int:
    """The most atoms ``dense_edges`` takes within the budget ([N, N, S, 3] elements)."""
    per_pair = dense_shifts(periodic, images) * 3 * torch.finfo(dtype).bits // 8
    return max(2, int(math.isqrt(int(dense_budget_bytes() // per_pair))))


def dense_edges(pos: Tensor, cutoff: float, box: Tensor | None = None, images: int = 1) -> Edges:
    """All pairs (and self-loops) of ONE molecule within ``cutoff`` by a brute-force search in
    plain aten ops (``nonzero`` gives a data-dependent edge count), sorted by receiver, sender,
    shift -- the order of :func:`tensornet_fast.radius_graph`. Traceable by make_fx / export.

    ``box`` [3, 3]: periodic, with lattice shifts -images..images per axis applied to the
    wrapped positions; exact when every plane spacing of the cell is >= cutoff / images.
    Memory O(N^2 (2 images + 1)^3): meant for molecules and small cells. Eager calls over the
    budget (``dense_max_atoms``) raise ``InputError``; exported packages carry it as the
    largest atom count they accept."""
    n = pos.shape[0]
    if isinstance(n, int) and not torch.compiler.is_compiling():
        limit = dense_max_atoms(pos.dtype, box is not None, images)
        if n > limit:
            shifts = dense_shifts(box is not None, images)
            raise InputError(
                f"dense_edges on {n} atoms needs a [{n}, {n}, {shifts}, 3] difference tensor, "
                f"more than the budget of {dense_budget_bytes() / 2**30:g} GiB "
                f"(TENSORNET_FAST_DENSE_MAX_GB; at most {limit} atoms here)"
            )
    p = pos.detach()
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    if box is None:
        diff = p[:, None, :] - p[None, :, :]
        d2 = (diff * diff).sum(-1)
        keep = (d2 < cutoff * cutoff) | eye
        i, j = keep.nonzero(as_tuple=True)
        return Edges(torch.stack((i, j)))
    b = box.detach()
    wrap = torch.floor(p @ inv3(b))
    p = p - wrap @ b
    r = torch.arange(-images, images + 1, dtype=p.dtype, device=p.device)
    shifts = torch.cartesian_prod(r, r, r)  # [S, 3], lexicographic
    zero = (2 * images + 1) ** 3 // 2  # index of (0, 0, 0)
    diff = p[:, None, None, :] - p[None, :, None, :] + (shifts @ b)[None, None]  # [N, N, S, 3]
    d2 = (diff * diff).sum(-1)
    self_loop = eye[:, :, None] & (torch.arange(shifts.shape[0], device=p.device) == zero)
    keep = (d2 < cutoff * cutoff) | self_loop
    i, j, s = keep.nonzero(as_tuple=True)
    total = shifts.index_select(0, s) - wrap.index_select(0, i) + wrap.index_select(0, j)
    return Edges(torch.stack((i, j)), total)
