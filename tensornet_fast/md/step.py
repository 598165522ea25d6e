"""The MD force step: energy + forces of a fixed system at new positions, with a Verlet-skin
neighbour list reused between searches, in one of two forms.

    step = MDStep(model, z, pos, batch=None, box=None, skin=0.5)
    for _ in range(n):
        energy, forces = step(pos)     # (rebuilds the candidates,) computes
        ...integrate pos with forces...

Both keep a list of candidate pairs within ``max_cutoff + skin`` (the model's cutoff or a larger
prior cutoff) and search it again only when the Verlet skin rule says so
(``neighbors.SkinRule``: some atom moved more than skin / 2 since the last search); until then
no pair can have entered the cutoff unseen. The skin check reads one scalar from the device per
step.

* **Eager** (the default where nothing is captured, i.e. on CPU): each step cuts the candidates
  to exactly the pairs a fresh search gives (the compiled filter, ``filter_pairs``: the search's
  own membership test, order and values) and runs the model's one assembly
  (``model.assembly.evaluate``) eagerly with the model's own backend -- the cpu backend's
  kernels on CPU. The results are those of a plain ``model(z, pos, ...)`` call, without its
  input checks and neighbour search; the candidate list has no capacity and grows as needed.
* **Static** (``cuda_graph=True``, the default on CUDA, or ``static=True``): the candidates live
  in ``capacity`` fixed slots (a :class:`~tensornet_fast.StaticRadiusGraph`); unused slots are
  padding (masked: a constant far-away vector, exact zeros) and pairs beyond the cutoff add
  exact zeros (phi(d) = 0, see ``md.traceable``), so a reused list gives the same energies and
  forces as a fresh one. The step runs the assembly over these fixed edges
  (``md.traceable.GivenEdges``) on the traceable math (the Triton kernels for a model on the
  ``"triton"`` backend, else the reference math): what a ``torch.cuda.CUDAGraph`` can capture
  once and replay. If a search finds more candidates than ``capacity``, the step raises
  :class:`~tensornet_fast.NeighborListOverflowError` saying what capacity to use (the static
  buffers cannot grow: create a new ``MDStep``).

Species, batch, box and charges are fixed for the life of the object (NVE/NVT MD); positions
change. The step follows the model's weights: after ``load_state_dict``, an in-place edit or a
replaced Parameter the next step uses the new weights (a captured CUDA graph is captured again,
since it read the old derived state); a model moved to another dtype or device raises
``InputError`` (the buffers are in the old one: create a new ``MDStep``). Each step checks its
outputs for NaN/inf (``InputError``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends.shared.cache import weight_tensors, weights_key
from ..errors import CapacityError, InputError, NeighborListOverflowError
from ..model import TensorNetModel
from ..model.assembly import (
    SearchEdges,
    autograd_allowed,
    check_finite_outputs,
    evaluate,
    max_cutoff,
)
from ..model.inputs import prepare_system
from ..neighbors import (
    NeighborList,
    SkinRule,
    StaticRadiusGraph,
    radius_graph_full,
    reject_coincident,
)
from ..neighbors import search as _search
from ..neighbors.verlet import _filter_reference
from .traceable import Edges, GivenEdges

__all__ = ["CapacityError", "MDStep"]


class _VerletEdges(SearchEdges):
    """The eager step's edge source: the candidates (every pair within ``max_cutoff + skin``
    and one self-loop per atom if the model has them, searched by ``rebuild``) cut each call to
    exactly the pairs of a fresh ``SearchEdges.search`` -- same edges, order and values: the
    compiled filter applies the search's own float64 membership test -- then split for the
    network and the pair priors."""

    def __init__(self, model, batch: Tensor, cell: Tensor | None, skin: float):
        super().__init__(model, batch)
        self.skin = skin
        self.cell = cell
        self.box64 = cell.detach().double().contiguous() if cell is not None else None
        self.candidates: NeighborList | None = None

    def rebuild(self, pos: Tensor) -> int:
        """Search the candidates at ``pos`` (a lower cutoff moves down by the skin too);
        returns their number."""
        lower = max(0.0, self.lower - self.skin)
        self.candidates = radius_graph_full(
            pos.detach(), self.cutoff + self.skin, self.batch, self.cell, self.loop, lower
        )
        return self.candidates.num_edges

    def search(self, positions: Tensor, cell: Tensor | None) -> NeighborList:
        cand = self.candidates
        if not _search.compiled_device_ok(positions.device):
            return _filter_reference(
                positions, self.batch, cell, cand, self.cutoff, self.lower, loop=self.loop
            )
        edge_index, shifts, vec, dist, row_ptr = _search.compiled_ops().filter_pairs(
            positions.detach().contiguous(),
            self.batch,
            self.box64,
            cand.edge_index,
            cand.shifts,
            float(self.cutoff),
            float(self.lower),
            self.loop,
        )
        edge_vec, edge_dist = _search.edge_tensors(
            positions, cell, self.batch, edge_index, shifts, vec, dist
        )
        return NeighborList(edge_index, edge_vec, edge_dist, shifts, row_ptr)


class MDStep:
    """Energy + forces of a fixed system at new positions (see module doc).

    Args:
        model: a loaded :class:`TensorNetModel` (its device is the step's device).
        z, pos, batch, box, q: as for ``model(...)``; ``pos`` gives the initial positions (used
            to size the neighbour list), the others are fixed. ``batch`` must be sorted.
        skin: Verlet skin (model length units); candidates are searched again when an atom
            moved more than skin / 2.
        capacity: static path only: edge capacity (candidate pairs within cutoff + skin, both
            directions, plus one self-loop per atom). Default: ``capacity_factor`` x the
            initial count + 8.
        cuda_graph: capture and replay a CUDA graph (default: True on CUDA, False elsewhere).
        warmup: eager steps on a side stream before the capture (CUDA only).
        static: the static path (fixed shapes, traceable math) even without a CUDA graph, e.g.
            to test on CPU what a graph captures. Default: only with ``cuda_graph``.
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
        static: bool | None = None,
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
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda" and static is not False
        if cuda_graph and self.device.type != "cuda":
            raise InputError(f"cuda_graph=True needs a CUDA model, this one is on {self.device}")
        if cuda_graph and static is False:
            raise InputError("cuda_graph=True needs the static path: drop static=False")
        self.cuda_graph = bool(cuda_graph)
        self.static = bool(cuda_graph or static)
        self.warmup = warmup
        self._weights, self._keep = weights_key(model), weight_tensors(model)
        self._dtype_device = (model.dtype, model.device)
        self.capacity: int | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.energy: Tensor | None = None
        self.forces: Tensor | None = None
        if not self.static:
            self.verlet = _VerletEdges(model, self.batch, self.cell, self.skin)
            self._rebuild(self.pos)
            return
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
        """[2, capacity] candidate edges; -1 in padding slots (eager path: [2, n_edges])."""
        if not self.static:
            return self.verlet.candidates.edge_index
        return self.graph_search.edge_index

    @property
    def shifts(self) -> Tensor:
        if not self.static:
            return self.verlet.candidates.shifts
        return self.graph_search.shifts

    @property
    def valid(self) -> Tensor:
        """[capacity] bool mask of the slots holding a candidate."""
        return self.edge_index[0] >= 0

    def edges(self) -> Edges:
        """The candidates as the assembly takes them (padding indices clamped to atom 0)."""
        if not self.static:
            c = self.verlet.candidates
            return Edges(c.edge_index, c.shifts if self.cell is not None else None, None, c.row_ptr)
        g = self.graph_search
        return Edges(
            g.edge_index.clamp(min=0),
            g.shifts if self.cell is not None else None,
            g.edge_index[0] >= 0,
            g.row_ptr,
        )

    def _rebuild(self, pos: Tensor) -> None:
        if not self.static:
            self.n_edges = self.verlet.rebuild(pos)  # validates pos (NaN / inf raise)
            reject_coincident(self.verlet.candidates)
            self.rule.mark(pos)
            self.rebuilds += 1
            return
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
        if not self.static:
            out = evaluate(self.model, self.system, self.verlet, forces=True)
            return out["energy"], out["forces"]
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
                f"{now[0]} on {now[1]} after this MDStep was made; its buffers are in the old "
                "dtype and device: create a new MDStep"
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
