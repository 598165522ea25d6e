"""Fixed-capacity radius graph for MD loops and CUDA graphs: ``StaticRadiusGraph`` plans the
cell grid once and writes every search into the same buffers; overflow is reported (device
status + ``check()`` raising ``NeighborListOverflowError``), never silent."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ..errors import InputError, NeighborListOverflowError
from . import search as _search
from .graph import (
    MAX_CELLS_AWAY,
    MAX_COORDINATE,
    NeighborList,
    max_edges,
    validate_graph_inputs,
)


@dataclasses.dataclass
class StaticNeighborList:
    """A radius graph in fixed-size buffers (see :class:`StaticRadiusGraph`).

    Slots ``[0, E)`` hold exactly the edges of :func:`radius_graph_full` (same order, values and
    shifts), slots ``[E, capacity)`` are padding: ``edge_index = -1``, ``shifts``, ``edge_vec``
    and ``edge_dist`` 0. ``row_ptr`` is the receiver CSR of the valid edges, so CSR consumers
    never see padding; ``E = row_ptr[-1]``. When the edges did not fit (or a position left the
    planned range) every slot is padding and ``row_ptr`` is all zero: an empty graph, never an
    out-of-range index. Nothing is dropped silently: ``status`` (on the device) records it and
    :meth:`check` raises :class:`~tensornet_fast.errors.NeighborListOverflowError` naming the
    capacity to use.
    """

    edge_index: Tensor  # [2, capacity] int64, -1 in padding slots
    edge_vec: Tensor  # [capacity, 3] (differentiable w.r.t. pos), 0 in padding slots
    edge_dist: Tensor  # [capacity], 0 in padding slots
    shifts: Tensor  # [capacity, 3] integer lattice shifts (as pos dtype), 0 in padding slots
    row_ptr: Tensor  # [N + 1] CSR row pointer of the valid edges
    status: Tensor  # int64 [2] on the device: edges found (capacity needed), out-of-plan flag
    capacity: int

    @property
    def num_edges(self) -> Tensor:
        """Valid edges as a 1-element device tensor (no host synchronisation)."""
        return self.row_ptr[-1:]

    @property
    def valid(self) -> Tensor:
        """[capacity] bool mask of the slots holding an edge."""
        return self.edge_index[0] >= 0

    def check(self) -> int:
        """Synchronise with the device; return the number of edges, or raise
        :class:`~tensornet_fast.errors.NeighborListOverflowError` if the buffers overflowed."""
        needed, out_of_plan = (int(x) for x in self.status.tolist())
        if out_of_plan:
            raise NeighborListOverflowError(
                "a position is NaN or inf, or moved beyond the range the static radius graph "
                "was planned for (max_abs): check the positions, or build a new "
                "StaticRadiusGraph from the current ones",
                0,
                self.capacity,
            )
        if needed > self.capacity:
            raise NeighborListOverflowError(
                f"the radius graph has {needed} edges but the static capacity is "
                f"{self.capacity}: raise capacity to at least {needed} (e.g. "
                f"{_suggest_capacity(needed)} for headroom); this call's buffers hold an empty "
                "graph",
                needed,
                self.capacity,
            )
        return needed

    def to_neighbor_list(self) -> NeighborList:
        """The valid part as a :class:`NeighborList` (checks first; synchronises)."""
        e = self.check()
        return NeighborList(
            self.edge_index[:, :e],
            self.edge_vec[:e],
            self.edge_dist[:e],
            self.shifts[:e],
            self.row_ptr,
        )


def _suggest_capacity(needed: int) -> int:
    return int(math.ceil(needed * 1.2 / 1024.0)) * 1024


class StaticRadiusGraph:
    """Radius graph into preallocated, fixed-capacity buffers: for MD loops and CUDA graphs.

    Built once from a representative frame, ``StaticRadiusGraph(cutoff, capacity, pos, batch,
    box, loop, cutoff_lower)`` validates the inputs, plans the cell grid on the host (from the
    box, or from the bounding box of open molecules) and allocates the output buffers on
    ``pos.device``. Each call ``graph(pos)`` then searches the new positions into the SAME
    buffers and returns a :class:`StaticNeighborList` (views of the buffers: the next call
    overwrites them). With ``check=False`` a call does no host-device synchronisation (on CUDA:
    kernel launches and device-side scans only, written to be captured in a CUDA graph; the CUDA
    path is compile-checked, not yet run on a GPU); call ``.check()`` on the result later,
    outside the captured region. With ``check=True`` (the default) it raises
    :class:`~tensornet_fast.errors.NeighborListOverflowError` right away.

    The edges are exactly those of :func:`radius_graph_full` at any positions: for open
    molecules atoms that leave the planned bounding box are clamped into its border bins
    (correct, only slower if many do). The fp64 rounding margin of the periodic search is
    planned for coordinates up to ``max_abs`` (default 4 x the largest |coordinate| + 1000 x
    cutoff); a position beyond it sets the out-of-plan flag (the call yields an empty graph and
    ``check`` raises). The box and batch are fixed by the plan: build a new object when they
    change. Gradients flow to ``pos`` through ``edge_vec`` / ``edge_dist`` (padding slots get
    none); positions are not validated per call (no NaN check, to stay synchronisation-free).
    """

    def __init__(
        self,
        cutoff: float,
        capacity: int,
        pos: Tensor,
        batch: Tensor | None = None,
        box: Tensor | None = None,
        loop: bool = False,
        cutoff_lower: float = 0.0,
        max_abs: float | None = None,
    ):
        if not _search.compiled_device_ok(_search.device_of(pos)):
            raise InputError(
                f"the static radius graph needs the compiled extension for {_search.device_of(pos)}"
            )
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise InputError(f"capacity must be an integer >= 0, got {capacity!r}")
        if capacity > max_edges():
            raise InputError(
                f"capacity {capacity} is more than the edge budget of {max_edges():.3g} "
                "(TENSORNET_FAST_MAX_EDGES)"
            )
        batch, boxes = validate_graph_inputs(pos, cutoff, batch, box, cutoff_lower)
        n = pos.shape[0]
        host = pos.detach().double().cpu()
        extent = float(host.abs().max()) if n else 0.0
        # the rounding margin grows with max_abs: keep it within the coordinate budgets
        limit = MAX_COORDINATE
        if boxes is not None and n:
            b = boxes.detach().double()
            cross = torch.linalg.cross(b[:, [1, 2, 0]], b[:, [2, 0, 1]], dim=-1)  # [M, 3, 3]
            volume = (b[:, 0] * cross[:, 0]).sum(-1).abs()
            spacing = float((volume[:, None] / cross.norm(dim=-1)).min())
            limit = min(limit, MAX_CELLS_AWAY * spacing)
        if max_abs is None:
            max_abs = min(4.0 * extent + 1000.0 * cutoff, max(limit, extent))
        if isinstance(max_abs, bool) or not isinstance(max_abs, (int, float)):
            raise InputError(f"max_abs must be a number, got {max_abs!r}")
        if not (math.isfinite(max_abs) and extent <= max_abs <= max(limit, extent)):
            raise InputError(
                f"max_abs must be finite, >= the largest |coordinate| {extent:.6g} and <= "
                f"{limit:.6g} (the coordinate budget), got {max_abs}"
            )
        box64 = boxes.detach().double().cpu().contiguous() if boxes is not None else None
        self.plan = _search.run_op(
            "radius_graph_plan",
            host.contiguous(),
            batch.cpu().contiguous(),
            box64,
            float(cutoff),
            float(cutoff_lower),
            float(max_abs),
        )
        dev, dt = pos.device, pos.dtype
        self.plan_dev = self.plan.to(dev)
        self.cutoff, self.cutoff_lower, self.loop = float(cutoff), float(cutoff_lower), bool(loop)
        self.capacity, self.n_atoms, self.dtype, self.device = capacity, n, dt, dev
        self.max_abs = float(max_abs)
        self.batch = batch.contiguous()
        self.boxes = boxes
        self.edge_index = torch.full((2, capacity), -1, dtype=torch.long, device=dev)
        self.shifts = torch.zeros(capacity, 3, dtype=dt, device=dev)
        self.vec = torch.zeros(capacity, 3, dtype=dt, device=dev)
        self.dist = torch.zeros(capacity, dtype=dt, device=dev)
        self.row_ptr = torch.zeros(n + 1, dtype=torch.long, device=dev)
        self.status = torch.zeros(2, dtype=torch.long, device=dev)

    def __call__(self, pos: Tensor, check: bool = True) -> StaticNeighborList:
        if not isinstance(pos, Tensor) or pos.shape != (self.n_atoms, 3):
            shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
            raise InputError(f"pos must be [{self.n_atoms}, 3] as planned, got {shape}")
        if pos.dtype != self.dtype or pos.device != self.device:
            raise InputError(
                f"pos must be {self.dtype} on {self.device} as planned, got {pos.dtype} on "
                f"{pos.device}"
            )
        _search.run_op(
            "radius_graph_static",
            pos.detach().contiguous(),
            self.batch,
            self.plan,
            self.plan_dev,
            self.loop,
            self.edge_index,
            self.shifts,
            self.vec,
            self.dist,
            self.row_ptr,
            self.status,
        )
        if self.dtype != torch.float64:
            # As radius_graph does for float32: the distance from the rounded vector, in float32
            # (exactly 0 on self-loops and padding, whose vectors are 0).
            torch.linalg.vector_norm(self.vec, dim=-1, out=self.dist)
        edge_vec, edge_dist = _search.attach_grad(
            pos,
            self.boxes,
            self.batch,
            self.edge_index,
            self.shifts,
            self.vec,
            self.dist,
            padded=True,
        )
        nl = StaticNeighborList(
            self.edge_index,
            edge_vec,
            edge_dist,
            self.shifts,
            self.row_ptr,
            self.status,
            self.capacity,
        )
        if check:
            nl.check()
        return nl


def radius_graph_static(
    pos: Tensor,
    cutoff: float,
    capacity: int,
    batch: Tensor | None = None,
    box: Tensor | None = None,
    loop: bool = False,
    cutoff_lower: float = 0.0,
    check: bool = True,
) -> StaticNeighborList:
    """One-shot :class:`StaticRadiusGraph`: the edges of :func:`radius_graph_full` in buffers of
    ``capacity`` slots (padding flagged by ``edge_index = -1``). Raises
    :class:`~tensornet_fast.errors.NeighborListOverflowError` (naming the capacity needed) when
    they do not fit, unless ``check=False``. For repeated calls keep a
    :class:`StaticRadiusGraph`, which plans once and reuses its buffers."""
    return StaticRadiusGraph(cutoff, capacity, pos, batch, box, loop, cutoff_lower)(pos, check)
