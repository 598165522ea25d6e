"""A fixed-size MD force step: static buffers, a static-capacity Verlet-skin neighbour list, and
(on CUDA) the energy + forces captured once in a ``torch.cuda.CUDAGraph`` and replayed.

    step = MDStep(model, z, pos, batch=None, box=None, skin=0.5)   # capacity from the start
    for _ in range(n):
        energy, forces = step(pos)     # copies pos into the static buffer, (rebuilds,) replays
        ...integrate pos with forces...

How it stays fixed-size: the neighbour list is a :class:`~tensornet_fast.StaticRadiusGraph` of
the candidate pairs within ``max_cutoff + skin`` (the model's cutoff or a larger prior cutoff)
in ``capacity`` slots; unused slots are padding (masked: a constant far-away vector, exact
zeros). Candidates are searched again only when the Verlet skin rule says so
(``neighbors.SkinRule``: some atom moved more than skin / 2 since the last search); then no pair
can have entered the cutoff unseen, and pairs beyond the cutoff add exact zeros (phi(d) = 0, see
``md.traceable``), so a reused list gives the same energies and forces as a fresh one. The
displacement check reads one scalar per step from the device (the only host synchronisation of a
step). If a search finds more candidates than ``capacity``, the step raises
:class:`~tensornet_fast.NeighborListOverflowError` saying what capacity to use (the static
buffers cannot grow: create a new ``MDStep``).

Species, batch, box and charges are fixed for the life of the object (NVE/NVT MD); positions
change. The step follows the model's weights: after ``load_state_dict``, an in-place edit or a
replaced Parameter the next step uses the new weights (a captured CUDA graph is captured again,
since it read the old derived state); a model moved to another dtype or device raises
``InputError`` (the static buffers are in the old one: create a new ``MDStep``). Each step checks
its outputs for NaN/inf (``InputError``). The step runs the model's one assembly over the fixed
edges (``model.assembly.evaluate`` with ``md.traceable.GivenEdges``): the Triton kernels when the
model's backend is ``"triton"`` (static shapes, no host synchronisation), else the reference
math; both are what a CUDA graph can capture. On CPU (or with ``cuda_graph=False``) the same
computation runs eagerly, which is what the CPU tests check.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends.shared.cache import weight_tensors, weights_key
from ..errors import CapacityError, InputError, NeighborListOverflowError
from ..model import TensorNetModel
from ..model.assembly import autograd_allowed, check_finite_outputs, evaluate, max_cutoff
from ..model.inputs import prepare_system
from ..neighbors import SkinRule, StaticRadiusGraph, reject_coincident
from .traceable import Edges, GivenEdges

__all__ = ["CapacityError", "MDStep"]


class MDStep:
    """Energy + forces of a fixed system at new positions, with static shapes (see module doc).

    Args:
        model: a loaded :class:`TensorNetModel` (its device is the step's device).
        z, pos, batch, box, q: as for ``model(...)``; ``pos`` gives the initial positions (used
            to size the neighbour list), the others are fixed. ``batch`` must be sorted.
        skin: Verlet skin (model length units); candidates are searched again when an atom
            moved more than skin / 2.
        capacity: static edge capacity (candidate pairs within cutoff + skin, both directions,
            plus one self-loop per atom). Default: ``capacity_factor`` x the initial count + 8.
        cuda_graph: capture and replay a CUDA graph (default: True on CUDA, False elsewhere).
        warmup: eager steps on a side stream before the capture (CUDA only).
    """

    def __init__(
        self,
        model: TensorNetModel,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        box: Tensor | None = None,
        q: Tensor | None = None,
        *,
        skin: float = 0.5,
        capacity: int | None = None,
        capacity_factor: float = 1.25,
        cuda_graph: bool | None = None,
        warmup: int = 3,
    ):
        self.model = model.eval()
        self.rule = SkinRule(skin)
        self.skin = self.rule.skin
        system = prepare_system(model, z, pos, batch, box, q, sort=False)
        self.system = system
        self.device = pos.device
        self.n_atoms = int(system.z.shape[0])
        self.n_mol = system.n_mol
        self.z, self.batch, self.cell = system.z, system.batch, system.cell
        self.cutoff = max_cutoff(model)
        self.pos = pos.detach().clone()  # the static input buffer
        self.rebuilds = 0
        self.n_edges = 0  # candidate edges of the last search
        self.system.pos = self.pos
        count = self._count()
        if capacity is None:
            capacity = int(math.ceil(count * capacity_factor)) + 8
        if capacity < count:
            raise NeighborListOverflowError(
                self._overflow_message(count, capacity), count, capacity
            )
        self.capacity = int(capacity)
        self.graph_search = self._plan(self.capacity)
        self._rebuild(self.pos)
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda"
        if cuda_graph and self.device.type != "cuda":
            raise InputError(f"cuda_graph=True needs a CUDA model, this one is on {self.device}")
        self.cuda_graph = bool(cuda_graph)
        self.warmup = warmup
        self._weights, self._keep = weights_key(model), weight_tensors(model)
        self._dtype_device = (model.dtype, model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.energy: Tensor | None = None
        self.forces: Tensor | None = None
        if self.cuda_graph:
            self._capture(warmup)

    # ---------------------------------------------------------------- neighbour list
    def _plan(self, capacity: int) -> StaticRadiusGraph:
        """The candidates' search: a StaticRadiusGraph with ``capacity`` slots."""
        return StaticRadiusGraph(
            self.cutoff + self.skin, capacity, self.pos, self.batch, self.cell, loop=True
        )

    def _count(self) -> int:
        """Candidates at the current positions (one search into zero slots)."""
        return int(self._plan(0)(self.pos, check=False).status[0])

    def _overflow_message(self, count: int, capacity: int) -> str:
        suggest = int(math.ceil(count * 1.25)) + 8
        return (
            f"neighbour list overflow: {count} candidate edges (pairs within cutoff + skin = "
            f"{self.cutoff + self.skin:g}, both directions, plus self-loops) exceed the static "
            f"capacity {capacity}; create a new MDStep with capacity={suggest} (or larger), "
            f"or a smaller skin"
        )

    @property
    def edge_index(self) -> Tensor:
        """[2, capacity] candidate edges; -1 in padding slots."""
        return self.graph_search.edge_index

    @property
    def shifts(self) -> Tensor:
        return self.graph_search.shifts

    @property
    def valid(self) -> Tensor:
        """[capacity] bool mask of the slots holding a candidate."""
        return self.graph_search.edge_index[0] >= 0

    def edges(self) -> Edges:
        """The candidates as the assembly takes them (padding indices clamped to atom 0)."""
        g = self.graph_search
        return Edges(
            g.edge_index.clamp(min=0),
            g.shifts if self.cell is not None else None,
            g.edge_index[0] >= 0,
            g.row_ptr,
        )

    def _rebuild(self, pos: Tensor) -> None:
        try:
            nl = self.graph_search(pos, check=True)  # in place: a captured graph reads these
        except NeighborListOverflowError as exc:
            if exc.required:
                raise NeighborListOverflowError(
                    self._overflow_message(exc.required, self.capacity),
                    exc.required,
                    self.capacity,
                ) from None
            raise
        reject_coincident(nl.to_neighbor_list())
        self.rule.mark(pos)
        self.n_edges = int(nl.row_ptr[-1])
        self.rebuilds += 1

    # ---------------------------------------------------------------- compute
    def _compute(self) -> tuple[Tensor, Tensor]:
        edges = GivenEdges(self.model, self.batch, self.edges())
        out = evaluate(self.model, self.system, edges, forces=True, static=True)
        return out["energy"], out["forces"]

    def _capture(self, warmup: int) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(max(1, warmup)):
                self._compute()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.energy, self.forces = self._compute()

    def _follow_weights(self) -> None:
        """Re-capture after a weight change (eager steps follow by themselves, through the
        derived-state cache); refuse a model that changed dtype or device."""
        key = weights_key(self.model)
        if key == self._weights:
            return
        now = (self.model.dtype, self.model.device)
        if now != self._dtype_device:
            raise InputError(
                f"the model moved from {self._dtype_device[0]} on {self._dtype_device[1]} to "
                f"{now[0]} on {now[1]} after this MDStep was made; its static buffers are in the "
                "old dtype and device: create a new MDStep"
            )
        self._weights, self._keep = key, weight_tensors(self.model)
        if self.graph is not None:
            self.graph = None
            self._capture(self.warmup)

    def step(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Energies [n_mol, 1] and forces [N, 3] at ``pos`` (same shape, dtype, device as the
        initial positions). With a CUDA graph the returned tensors are the graph's static
        outputs, overwritten by the next step: clone them to keep them."""
        if not isinstance(pos, Tensor):  # numpy array or list: the step's dtype and device
            try:
                pos = torch.as_tensor(pos, dtype=self.pos.dtype, device=self.pos.device)
            except (TypeError, ValueError, RuntimeError):
                raise InputError(
                    f"pos must be a tensor or array, got {type(pos).__name__}"
                ) from None
        if pos.shape != self.pos.shape or pos.dtype != self.pos.dtype:
            raise InputError(
                f"pos must be {tuple(self.pos.shape)} {self.pos.dtype}, got "
                f"{tuple(pos.shape)} {pos.dtype}"
            )
        with autograd_allowed():  # forces are autograd results, also under inference_mode
            self._follow_weights()
            self.pos.copy_(pos.detach())
            if self.rule.moved_too_far(self.pos):
                self._rebuild(self.pos)
            if self.graph is not None:
                self.graph.replay()
                energy, forces = self.energy, self.forces
            else:
                energy, forces = self._compute()
            # one more device read per step: NaN/inf outputs raise instead of driving the MD
            check_finite_outputs(self.model, {"energy": energy, "forces": forces}, self.system)
            return energy, forces

    __call__ = step
