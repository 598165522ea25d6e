"""A fixed-size MD force step: static buffers, a static-capacity Verlet-skin neighbour list, and
(on CUDA) the energy + forces captured once in a ``torch.cuda.CUDAGraph`` and replayed.

    step = MDStep(model, z, pos, batch=None, box=None, skin=0.5)   # capacity from the start
    for _ in range(n):
        energy, forces = step(pos)     # copies pos into the static buffer, (rebuilds,) replays
        ...integrate pos with forces...

How it stays fixed-size: the neighbour list holds the candidate pairs within
``max_cutoff + skin`` (``traceable.max_cutoff``: the model's cutoff or a larger prior cutoff),
padded to ``capacity`` edges with masked dummy edges (``valid == False``, a constant far-away
vector, so they add exact zeros). Candidates are rebuilt -- on the host side, with the compiled
cell list (``radius_graph_full``) -- only when some atom moved more than skin / 2 since the last
build; then no pair can have entered the cutoff unseen, and pairs beyond the cutoff add exact
zeros (phi(d) = 0, see ``traceable``), so a reused list gives the same energies and forces as a
fresh one. The displacement check reads one scalar per step from the device (the only host
synchronisation of a step). If a rebuild finds more candidates than ``capacity``, the step raises
:class:`CapacityError` saying what capacity to use (the static buffers cannot grow: create a new
``MDStep``).

Species, batch, box and charges are fixed for the life of the object (NVE/NVT MD); positions
change. The step runs ``traceable.energy_forces_stress``: the Triton kernels when the model's
backend is ``"triton"`` (static shapes, no host synchronisation), else the reference math; both
are what a CUDA graph can capture. On CPU (or with
``cuda_graph=False``) the same computation runs eagerly, which is what the CPU tests check.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from ..model import TensorNetModel
from ..neighbors import box_per_molecule, radius_graph_full, reject_coincident
from .traceable import Edges, energy_forces_stress, max_cutoff


class CapacityError(RuntimeError):
    """More candidate edges than the static capacity of an :class:`MDStep`."""


class MDStep:
    """Energy + forces of a fixed system at new positions, with static shapes (see module doc).

    Args:
        model: a loaded :class:`TensorNetModel` (its device is the step's device).
        z, pos, batch, box, q: as for ``model(...)``; ``pos`` gives the initial positions (used
            to size the neighbour list), the others are fixed.
        skin: Verlet skin (model length units); candidates are rebuilt when an atom moved more
            than skin / 2.
        capacity: static edge capacity (candidate pairs within cutoff + skin, both directions,
            plus one self-loop per atom). Default: ``capacity_factor`` x the initial count.
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
        if not (math.isfinite(skin) and skin >= 0):
            raise InputError(f"skin must be a finite number >= 0, got {skin}")
        self.model = model.eval()
        z, batch = model._check_inputs(z, pos, batch, q)
        if bool((batch[1:] < batch[:-1]).any()):
            raise InputError("MDStep needs a sorted batch (atoms of a molecule contiguous)")
        self.device = pos.device
        self.n_atoms = int(z.shape[0])
        self.n_mol = int(batch.max()) + 1
        if box is None:
            box = model._default_box()
        self.skin = float(skin)
        self.cutoff = max_cutoff(model)
        self.z, self.batch = z, batch
        self.box = box
        self.cell = box_per_molecule(box, self.n_mol, pos).contiguous() if box is not None else None
        self.charge_factor = model._charge_factor(q, batch, self.n_mol)
        self.atoms_per_mol = torch.bincount(batch, minlength=self.n_mol)
        self.pos = pos.detach().clone()  # the static input buffer
        self.rebuilds = 0
        self.n_edges = 0  # candidate edges of the last build
        count = self._candidates(self.pos)[0].shape[1]
        if capacity is None:
            capacity = int(math.ceil(count * capacity_factor)) + 8
        if capacity < count:
            raise CapacityError(self._overflow_message(count, capacity))
        self.capacity = int(capacity)
        dtype, dev = pos.dtype, self.device
        self.edge_index = torch.zeros(2, self.capacity, dtype=torch.long, device=dev)
        self.shifts = torch.zeros(self.capacity, 3, dtype=dtype, device=dev)
        self.valid = torch.zeros(self.capacity, dtype=torch.bool, device=dev)
        self._ref_pos = self.pos.clone()
        self._rebuild(self.pos)
        if cuda_graph is None:
            cuda_graph = dev.type == "cuda"
        if cuda_graph and dev.type != "cuda":
            raise InputError(f"cuda_graph=True needs a CUDA model, this one is on {dev}")
        self.cuda_graph = bool(cuda_graph)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.energy: Tensor | None = None
        self.forces: Tensor | None = None
        if self.cuda_graph:
            self._capture(warmup)

    # ---------------------------------------------------------------- neighbour list
    def _overflow_message(self, count: int, capacity: int) -> str:
        suggest = int(math.ceil(count * 1.25)) + 8
        return (
            f"neighbour list overflow: {count} candidate edges (pairs within cutoff + skin = "
            f"{self.cutoff + self.skin:g}, both directions, plus self-loops) exceed the static "
            f"capacity {capacity}; create a new MDStep with capacity={suggest} (or larger), "
            f"or a smaller skin"
        )

    def _candidates(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        nl = radius_graph_full(pos, self.cutoff + self.skin, self.batch, self.box, loop=True)
        reject_coincident(nl)
        return nl.edge_index, nl.shifts

    def _rebuild(self, pos: Tensor) -> None:
        edge_index, shifts = self._candidates(pos)
        count = edge_index.shape[1]
        if count > self.capacity:
            raise CapacityError(self._overflow_message(count, self.capacity))
        # In place: a captured graph reads these very buffers. Padding edges point at the last
        # atom, so receivers stay sorted (the triton backend's CSR needs it).
        self.edge_index.fill_(self.z.shape[0] - 1)
        self.edge_index[:, :count].copy_(edge_index)
        self.shifts.zero_()
        self.shifts[:count].copy_(shifts)
        self.valid.zero_()
        self.valid[:count] = True
        self._ref_pos.copy_(pos)
        self.n_edges = count
        self.rebuilds += 1

    def _needs_rebuild(self, pos: Tensor) -> bool:
        moved2 = float(((pos - self._ref_pos) ** 2).sum(1).max())
        # Slightly before skin / 2 (1e-9 relative), so rounding can never let a pair in unseen.
        half = 0.5 * self.skin * (1.0 - 1e-9)
        return moved2 > half * half

    # ---------------------------------------------------------------- compute
    def _compute(self) -> tuple[Tensor, Tensor]:
        edges = Edges(self.edge_index, self.shifts if self.cell is not None else None, self.valid)
        energy, forces, _ = energy_forces_stress(
            self.model,
            self.z,
            self.pos,
            self.batch,
            self.n_mol,
            self.atoms_per_mol,
            self.charge_factor,
            edges,
            self.cell,
        )
        return energy, forces

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

    def step(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Energies [n_mol, 1] and forces [N, 3] at ``pos`` (same shape, dtype, device as the
        initial positions). With a CUDA graph the returned tensors are the graph's static
        outputs, overwritten by the next step: clone them to keep them."""
        if pos.shape != self.pos.shape or pos.dtype != self.pos.dtype:
            raise InputError(
                f"pos must be {tuple(self.pos.shape)} {self.pos.dtype}, got "
                f"{tuple(pos.shape)} {pos.dtype}"
            )
        self.pos.copy_(pos.detach())
        if self._needs_rebuild(self.pos):
            self._rebuild(self.pos)
        if self.graph is not None:
            self.graph.replay()
            return self.energy, self.forces
        return self._compute()

    __call__ = step
