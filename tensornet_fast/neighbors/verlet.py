"""Verlet-skin neighbour lists: the ONE skin rule (``SkinRule``: rebuild once an atom moved more
than skin / 2 since the last build) and ``VerletList``, which filters a candidate list built
with ``cutoff + skin`` down to exactly the pairs within the cutoff. ``MDStep`` uses the same rule
for its fixed-capacity candidates."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from . import search as _search
from .brute_force import radius_graph_reference
from .graph import NeighborList, safe_norm, validate_graph_inputs


class SkinRule:
    """When a list of candidates within ``cutoff + skin`` must be rebuilt: once some atom moved
    more than skin / 2 since the last build (before that no pair can have come from beyond
    cutoff + skin to within the cutoff). The threshold is 1e-9 (relative) below skin / 2, so
    rounding can never let a pair in unseen. ``moved_too_far`` reads one scalar from the device.
    """

    def __init__(self, skin: float):
        if isinstance(skin, bool) or not (
            isinstance(skin, (int, float)) and math.isfinite(skin) and skin >= 0
        ):
            raise InputError(f"skin must be a finite number >= 0, got {skin!r}")
        self.skin = float(skin)
        self.reference: Tensor | None = None  # positions at the last build

    def mark(self, pos: Tensor) -> None:
        """Record the positions of a build."""
        pos = pos.detach()
        if self.reference is None or self.reference.shape != pos.shape:
            self.reference = pos.clone()
        else:
            self.reference.copy_(pos)

    def moved_too_far(self, pos: Tensor) -> bool:
        ref = self.reference
        if ref is None or (ref.shape, ref.dtype, ref.device) != (pos.shape, pos.dtype, pos.device):
            return True
        if pos.shape[0] == 0:
            return False
        moved2 = float(((pos.detach() - ref) ** 2).sum(1).max())
        half = 0.5 * self.skin * (1.0 - 1e-9)
        # NaN (a NaN position) counts as moved: the rebuild's search then reports it
        return not (moved2 <= half * half)


class VerletList:
    """Neighbour list with a Verlet skin for MD.

    ``update(pos, batch, box)`` returns exactly the pairs within ``[cutoff_lower, cutoff)`` (the
    same edges, order and values as :func:`radius_graph_full`), filtering a candidate list built
    with ``cutoff + skin``. The candidates are rebuilt when some atom moved more than skin / 2
    since the last build (then no pair can have crossed from beyond cutoff + skin to inside
    cutoff), or when the box, batch, atom count, dtype or device changed. ``rebuilds`` counts
    the builds.
    """

    def __init__(
        self,
        cutoff: float,
        skin: float,
        loop: bool = False,
        cutoff_lower: float = 0.0,
        backend: str | None = None,
    ):
        self.rule = SkinRule(skin)
        if (
            isinstance(cutoff, bool)
            or not isinstance(cutoff, (int, float))
            or not math.isfinite(cutoff)
            or cutoff <= 0
        ):
            raise InputError(f"cutoff must be a positive finite number, got {cutoff!r}")
        if isinstance(cutoff_lower, bool) or not isinstance(cutoff_lower, (int, float)):
            raise InputError(f"cutoff_lower must be a number >= 0, got {cutoff_lower!r}")
        if not 0 <= cutoff_lower < cutoff:
            raise InputError(f"need 0 <= cutoff_lower < cutoff, got {cutoff_lower} and {cutoff}")
        if not isinstance(loop, bool):
            raise InputError(f"loop must be True or False, got {loop!r}")
        _search.resolve_search(backend, torch.device("cpu")) if backend == "reference" else None
        self.cutoff, self.skin, self.loop, self.cutoff_lower = cutoff, skin, loop, cutoff_lower
        self.backend = backend
        self.rebuilds = 0
        self._batch: Tensor | None = None
        self._boxes: Tensor | None = None
        self._cand: NeighborList | None = None

    def _stale(self, pos: Tensor, batch: Tensor, boxes: Tensor | None) -> bool:
        if self._batch is None or self._batch.shape != batch.shape:
            return True
        if not torch.equal(self._batch, batch):
            return True
        if (boxes is None) != (self._boxes is None):
            return True
        if boxes is not None and not torch.equal(boxes.detach(), self._boxes):
            return True
        return self.rule.moved_too_far(pos)

    def update(
        self, pos: Tensor, batch: Tensor | None = None, box: Tensor | None = None
    ) -> NeighborList:
        backend = _search.resolve_search(self.backend, _search.device_of(pos))
        batch, boxes = validate_graph_inputs(pos, self.cutoff, batch, box, self.cutoff_lower)
        if self._stale(pos, batch, boxes):
            lower = max(0.0, self.cutoff_lower - self.skin)
            build = _search.compiled_search if backend == "compiled" else None
            if build is not None:
                cand = build(pos.detach(), self.cutoff + self.skin, batch, boxes, self.loop, lower)
            else:
                cand = radius_graph_reference(
                    pos.detach(), self.cutoff + self.skin, batch, boxes, self.loop, lower
                )
            self._cand = cand
            self.rule.mark(pos)
            self._batch = batch.clone()
            self._boxes = boxes.detach().clone() if boxes is not None else None
            self.rebuilds += 1
        cand = self._cand
        if backend == "compiled":
            box64 = boxes.detach().double().contiguous() if boxes is not None else None
            edge_index, shifts, vec, dist, row_ptr = _search.run_op(
                "filter_pairs",
                pos.detach().contiguous(),
                batch.contiguous(),
                box64,
                cand.edge_index,
                cand.shifts,
                float(self.cutoff),
                float(self.cutoff_lower),
                bool(self.loop),
            )
            edge_vec, edge_dist = _search.edge_tensors(
                pos, boxes, batch, edge_index, shifts, vec, dist
            )
            return NeighborList(edge_index, edge_vec, edge_dist, shifts, row_ptr)
        return _filter_reference(pos, batch, boxes, cand, self.cutoff, self.cutoff_lower, self.loop)


def _filter_reference(
    pos: Tensor,
    batch: Tensor,
    boxes: Tensor | None,
    cand: NeighborList,
    cutoff: float,
    cutoff_lower: float,
    loop: bool,
) -> NeighborList:
    i, j = cand.edge_index
    shifts = cand.shifts
    vec = pos[i] - pos[j]
    if boxes is not None:
        vec = vec + torch.einsum("ea,eab->eb", shifts, boxes[batch[i]])
    is_self = (i == j) & (shifts == 0).all(1)
    d2 = (vec.detach() ** 2).sum(1)
    inside = (d2 < cutoff**2) & (d2 >= cutoff_lower**2)
    keep = torch.where(is_self, torch.full_like(is_self, loop), inside)
    i, j, shifts, vec, is_self = i[keep], j[keep], shifts[keep], vec[keep], is_self[keep]
    n = pos.shape[0]
    row_ptr = torch.zeros(n + 1, dtype=torch.long, device=pos.device)
    row_ptr[1:] = torch.cumsum(torch.bincount(i, minlength=n), 0)
    return NeighborList(torch.stack((i, j)), vec, safe_norm(vec, is_self), shifts, row_ptr)
