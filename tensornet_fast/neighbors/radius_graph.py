"""Radius graph (neighbour list): compiled cell-list search with a plain-PyTorch reference.

Two searches with the same output:
- ``backend="compiled"`` (the default whenever ``tensornet_fast._C`` imports): the O(N) cell-list
  search of csrc/radius_graph_cpu.cpp (OpenMP) or csrc/radius_graph_cuda.cu, membership decided
  by an exact float64 test on the original positions (see csrc/radius_graph_core.h);
- ``backend="reference"``: a brute force in PyTorch, O(N^2 * images) per call in row chunks to
  bound memory. It is what the compiled search is tested against, and the fallback without the
  extension.
Both are exact for any triclinic cell and any cutoff, including cutoffs larger than half the
cell (every periodic image within the cutoff is a separate edge). :class:`StaticRadiusGraph` /
:func:`radius_graph_static` run the compiled search into fixed-capacity buffers (MD loops, CUDA
graphs) with overflow reported, never silent.

Conventions (SPEC.md): edge e = (i, j), i = edge_index[0] receives, j = edge_index[1] sends,
``edge_vec = pos[i] - pos[j] + shift @ box``; both directions of every pair; pairs with
``cutoff_lower <= d < cutoff``; with ``loop=True`` one self-loop (i, i) per atom with d = 0.
Edges are sorted by receiver, then sender, then shift: the same input gives the same order.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from torch import Tensor

from .. import _extension
from ..errors import InputError, NeighborListOverflowError

# Row chunk of the brute-force search: chunk * n_atoms * n_images candidate pairs at most.
_MAX_CANDIDATES = 1 << 22


@dataclasses.dataclass
class NeighborList:
    edge_index: Tensor  # [2, E] int64, sorted by receiver i = edge_index[0]
    edge_vec: Tensor  # [E, 3] pos[i] - pos[j] + shift @ box (differentiable)
    edge_dist: Tensor  # [E] |edge_vec|, exactly 0 on self-loops (differentiable elsewhere)
    shifts: Tensor  # [E, 3] integer lattice shifts (as pos dtype), 0 without a box
    row_ptr: Tensor  # [N + 1] CSR row pointer over receivers

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def validate_graph_inputs(
    pos: Tensor, cutoff: float, batch: Tensor | None, box: Tensor | None, cutoff_lower: float
) -> tuple[Tensor, Tensor | None]:
    """Check shapes, dtypes and values; return (batch [N] int64, box [B, 3, 3] or None)."""
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise InputError(f"pos must be a [n_atoms, 3] tensor, got {shape}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise InputError(f"pos must be float32 or float64, got {pos.dtype}")
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise InputError(f"cutoff must be a positive finite number, got {cutoff}")
    if not (0 <= cutoff_lower < cutoff):
        raise InputError(f"need 0 <= cutoff_lower < cutoff, got {cutoff_lower} and {cutoff}")
    if not bool(torch.isfinite(pos).all()):
        bad = torch.nonzero(~torch.isfinite(pos).all(1)).flatten()[:5].tolist()
        raise InputError(f"positions contain NaN or inf (atoms {bad})")
    n = pos.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=pos.device)
    else:
        if batch.dim() != 1 or batch.shape[0] != n:
            raise InputError(f"batch must have shape [{n}], got {tuple(batch.shape)}")
        if batch.dtype.is_floating_point or batch.dtype == torch.bool:
            raise InputError(f"batch must be an integer tensor, got {batch.dtype}")
        if batch.device != pos.device:
            raise InputError(f"batch is on {batch.device} but pos on {pos.device}")
        batch = batch.long()
        if n and bool((batch[1:] < batch[:-1]).any()):
            raise InputError("batch must be sorted (atoms of a molecule contiguous, ascending)")
        if n and int(batch[0]) < 0:
            raise InputError("batch indices must be >= 0")
    if box is not None:
        n_mol = int(batch.max()) + 1 if n else 0
        box = box_per_molecule(box, n_mol, pos)
    return batch, box


def box_per_molecule(box: Tensor, n_mol: int, pos: Tensor) -> Tensor:
    """Validate a [3, 3] or [n_molecules, 3, 3] cell (rows a, b, c) -> [n_molecules, 3, 3]."""
    if box.device != pos.device:
        raise InputError(f"box is on {box.device} but pos on {pos.device}")
    if box.dtype != pos.dtype:
        raise InputError(f"box dtype {box.dtype} differs from pos dtype {pos.dtype}")
    if box.shape == (3, 3):
        box = box.unsqueeze(0).expand(max(n_mol, 1), 3, 3)
    elif box.dim() != 3 or box.shape[1:] != (3, 3) or box.shape[0] != n_mol:
        raise InputError(f"box must be [3, 3] or [{n_mol}, 3, 3], got {tuple(box.shape)}")
    if not bool(torch.isfinite(box).all()):
        raise InputError("box contains NaN or inf")
    det = torch.linalg.det(box.detach().double())
    scale = box.detach().double().norm(dim=(1, 2)) ** 3
    if bool((det.abs() <= 1e-9 * scale).any()) or bool((scale == 0).any()):
        raise InputError("box is singular (its rows a, b, c must span 3D space)")
    return box


def _image_range(box: Tensor, cutoff: float) -> Tensor:
    """Images needed per axis for wrapped coordinates: ceil(cutoff / plane spacing) + 1.  [3]"""
    b = box.detach().double()
    volume = torch.linalg.det(b).abs()
    cross = torch.stack(
        (
            torch.linalg.cross(b[1], b[2]),
            torch.linalg.cross(b[2], b[0]),
            torch.linalg.cross(b[0], b[1]),
        )
    )
    spacing = volume / cross.norm(dim=1)
    return torch.ceil(cutoff / spacing).long() + 1


def _molecule_pairs(
    pos: Tensor,
    box: Tensor | None,
    cutoff: float,
    cutoff_lower: float,
    loop: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """All (i, j, shift) within one molecule (local indices), self-loop handling included."""
    n = pos.shape[0]
    p = pos.detach()
    if box is None:
        shifts = torch.zeros(1, 3, dtype=p.dtype, device=p.device)
        wrap = torch.zeros_like(p)
    else:
        inv = torch.linalg.inv(box.detach())
        wrap = torch.floor(p @ inv)  # integer cell of each atom
        p = p - wrap @ box.detach()
        reach = _image_range(box, cutoff).tolist()
        axes = [torch.arange(-r, r + 1, device=p.device, dtype=p.dtype) for r in reach]
        shifts = torch.cartesian_prod(*axes)  # [S, 3]
    shift_vecs = shifts @ box.detach() if box is not None else shifts  # [S, 3]
    zero_shift = int((shifts.abs().sum(1) == 0).nonzero()[0])
    chunk = max(1, _MAX_CANDIDATES // max(1, n * shifts.shape[0]))
    cut2, low2 = cutoff * cutoff, cutoff_lower * cutoff_lower
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk), device=p.device)
        diff = p[rows, None, None, :] - p[None, :, None, :] + shift_vecs[None, None]  # [c, N, S, 3]
        d2 = (diff * diff).sum(-1)
        keep = (d2 < cut2) & (d2 >= low2)
        is_self = (rows[:, None] == torch.arange(n, device=p.device)[None, :])[..., None] & (
            torch.arange(shifts.shape[0], device=p.device) == zero_shift
        )
        keep &= ~is_self
        ci, cj, cs = keep.nonzero(as_tuple=True)
        found_i.append(rows[ci])
        found_j.append(cj)
        found_s.append(cs)
    if loop:
        idx = torch.arange(n, device=p.device)
        found_i.append(idx)
        found_j.append(idx)
        found_s.append(torch.full_like(idx, zero_shift))
    i, j, s = torch.cat(found_i), torch.cat(found_j), torch.cat(found_s)
    # Shift that applies to the original (unwrapped) positions.
    total_shift = shifts[s] - wrap[i] + wrap[j] if box is not None else shifts[s]
    return i, j, total_shift


def radius_graph_reference(
    pos: Tensor,
    cutoff: float,
    batch: Tensor | None = None,
    box: Tensor | None = None,
    loop: bool = False,
    cutoff_lower: float = 0.0,
) -> NeighborList:
    """Reference (brute-force PyTorch) radius graph returning the full :class:`NeighborList`."""
    batch, boxes = validate_graph_inputs(pos, cutoff, batch, box, cutoff_lower)
    n = pos.shape[0]
    ii, jj, ss = [], [], []
    if n:
        counts = torch.bincount(batch)
        starts = torch.cumsum(counts, 0) - counts
        for mol in torch.nonzero(counts).flatten().tolist():
            lo, cnt = int(starts[mol]), int(counts[mol])
            mol_box = boxes[mol] if boxes is not None else None
            i, j, s = _molecule_pairs(pos[lo : lo + cnt], mol_box, cutoff, cutoff_lower, loop)
            ii.append(i + lo)
            jj.append(j + lo)
            ss.append(s)
    if ii:
        i, j, shifts = torch.cat(ii), torch.cat(jj), torch.cat(ss)
    else:
        i = j = torch.zeros(0, dtype=torch.long, device=pos.device)
        shifts = torch.zeros(0, 3, dtype=pos.dtype, device=pos.device)
    order = _lexsort(i, j, shifts)
    i, j, shifts = i[order], j[order], shifts[order]
    edge_vec = pos.index_select(0, i) - pos.index_select(0, j)
    if boxes is not None:
        edge_vec = edge_vec + torch.einsum("ea,eab->eb", shifts, boxes[batch[i]])
    # Only the true self-loop (zero shift) has d = 0; periodic self-images (i, i, s != 0) are
    # ordinary edges at the length of a lattice vector.
    edge_dist = safe_norm(edge_vec, (i == j) & (shifts == 0).all(1))
    row_ptr = torch.zeros(n + 1, dtype=torch.long, device=pos.device)
    row_ptr[1:] = torch.cumsum(torch.bincount(i, minlength=n), 0)
    return NeighborList(torch.stack((i, j)), edge_vec, edge_dist, shifts, row_ptr)


def _lexsort(i: Tensor, j: Tensor, shifts: Tensor) -> Tensor:
    keys = [shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i]  # last key is the primary one
    order = torch.arange(i.shape[0], device=i.device)
    for key in keys:
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def safe_norm(vec: Tensor, is_self: Tensor) -> Tensor:
    """|vec| with an exact 0 (and a zero gradient) on self-loops, whose vector is 0."""
    safe = torch.where(is_self[:, None], torch.ones_like(vec), vec)
    return torch.where(is_self, torch.zeros_like(vec[:, 0]), safe.norm(dim=-1))


# ----------------------------------------------------------------------------- compiled search
_OPS = None  # torch.ops.tensornet_fast once the extension imported, False if it cannot
_WARNED = False


def compiled_available() -> bool:
    """True when the compiled extension (tensornet_fast._C) is importable."""
    global _OPS
    if _OPS is None:
        _OPS = _extension.ops() or False
    return _OPS is not False


def _compiled_device_ok(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _extension.with_cuda()


def _device(pos) -> torch.device:
    return pos.device if isinstance(pos, Tensor) else torch.device("cpu")


def _resolve(backend: str | None, device: torch.device) -> str:
    global _WARNED
    if backend not in (None, "auto", "compiled", "reference"):
        raise InputError(f"backend must be 'compiled', 'reference' or None, got {backend!r}")
    if backend == "reference":
        return "reference"
    ok = compiled_available() and _compiled_device_ok(device)
    if backend == "compiled" and not ok:
        raise InputError(f"the compiled radius graph is not available for device {device}")
    if not ok and not _WARNED:
        _WARNED = True
        warnings.warn(
            f"tensornet_fast._C not available for {device}: using the O(N^2) reference radius "
            "graph (build the extension with `python setup.py build_ext --inplace`)",
            stacklevel=3,
        )
    return "compiled" if ok else "reference"


class _EdgeVec(torch.autograd.Function):
    """edge_vec = pos[i] - pos[j] + shifts @ box[mol(i)], whose value the extension already
    computed (in float64, rounded once). Backward is a scatter of the incoming gradient, written
    in differentiable torch ops, so double backward works; box gets sum_e shifts_e (x) g_e."""

    @staticmethod
    def forward(ctx, pos, boxes, vec, edge_index, shifts, edge_mol, padded=False):  # noqa: D102
        ctx.save_for_backward(edge_index, shifts, edge_mol)
        ctx.n_atoms = pos.shape[0]
        ctx.has_box = boxes is not None
        ctx.n_mol = boxes.shape[0] if boxes is not None else 0
        ctx.padded = padded
        return vec

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        edge_index, shifts, edge_mol = ctx.saved_tensors
        if ctx.padded:  # static-capacity buffers: padding slots (index -1) get no gradient
            valid = edge_index[0] >= 0
            g = torch.where(valid[:, None], g, torch.zeros_like(g))
            edge_index = edge_index.clamp(min=0)
            edge_mol = edge_mol.clamp(min=0) if edge_mol is not None else None
        grad_pos = grad_box = None
        if ctx.needs_input_grad[0]:
            # scatter_add, not index_add: the same sums in the same order on CPU (bitwise), 3.6x
            # faster there (64 g2 molecules, 3841 edges: 83 vs 297 us; 1029 waters: 1.5 vs 6.6 ms)
            grad_pos = torch.zeros(ctx.n_atoms, 3, dtype=g.dtype, device=g.device)
            grad_pos = grad_pos.scatter_add(0, edge_index[0, :, None].expand(-1, 3), g)
            grad_pos = grad_pos.scatter_add(0, edge_index[1, :, None].expand(-1, 3), -g)
        if ctx.has_box and ctx.needs_input_grad[1]:
            if ctx.n_mol == 1:
                grad_box = (shifts.t() @ g).unsqueeze(0)
            else:
                outer = shifts[:, :, None] * g[:, None, :]
                grad_box = torch.zeros(ctx.n_mol, 3, 3, dtype=g.dtype, device=g.device)
                grad_box = grad_box.index_add(0, edge_mol, outer)
        return grad_pos, grad_box, None, None, None, None, None


class _EdgeDist(torch.autograd.Function):
    """|edge_vec| with the extension's value; gradient vec / d, exactly 0 where d = 0."""

    @staticmethod
    def forward(ctx, vec, dist, is_self):  # noqa: D102
        ctx.save_for_backward(vec, is_self)
        return dist

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        vec, is_self = ctx.saved_tensors
        # Recomputing d here (instead of saving the output) keeps double backward exact.
        d = safe_norm(vec, is_self)
        d = torch.where(is_self, torch.ones_like(d), d)
        grad = torch.where(is_self[:, None], torch.zeros_like(vec), vec * (g / d)[:, None])
        return grad, None, None


def _attach_grad(
    pos: Tensor,
    boxes: Tensor | None,
    batch: Tensor,
    edge_index: Tensor,
    shifts: Tensor,
    vec: Tensor,
    dist: Tensor,
    padded: bool = False,
) -> tuple[Tensor, Tensor]:
    needs = pos.requires_grad or (boxes is not None and boxes.requires_grad)
    if not (needs and torch.is_grad_enabled()):
        return vec, dist
    edge_mol = None
    if boxes is not None and boxes.shape[0] > 1:
        edge_mol = batch[edge_index[0].clamp(min=0)] if padded else batch[edge_index[0]]
    edge_vec = _EdgeVec.apply(pos, boxes, vec, edge_index, shifts, edge_mol, padded)
    # d = 0 only on self-loops and coincident atoms: their distance gradient is 0, never NaN.
    edge_dist = _EdgeDist.apply(edge_vec, dist, dist == 0)
    return edge_vec, edge_dist


def _compiled(
    pos: Tensor,
    cutoff: float,
    batch: Tensor,
    boxes: Tensor | None,
    loop: bool,
    cutoff_lower: float,
) -> NeighborList:
    box64 = boxes.detach().double().contiguous() if boxes is not None else None
    edge_index, shifts, vec, dist, row_ptr = _OPS.radius_graph(
        pos.detach().contiguous(),
        batch.contiguous(),
        box64,
        float(cutoff),
        float(cutoff_lower),
        bool(loop),
    )
    edge_vec, edge_dist = _edge_tensors(pos, boxes, batch, edge_index, shifts, vec, dist)
    return NeighborList(edge_index, edge_vec, edge_dist, shifts, row_ptr)


def _edge_tensors(
    pos: Tensor,
    boxes: Tensor | None,
    batch: Tensor,
    edge_index: Tensor,
    shifts: Tensor,
    vec: Tensor,
    dist: Tensor,
) -> tuple[Tensor, Tensor]:
    """Autograd-ready (edge_vec, edge_dist) from the extension's output."""
    if pos.dtype != torch.float64:
        # The vectors are float64 results rounded once (for open boundaries that is bitwise
        # pos[i] - pos[j] in float32; with a box it avoids float32 cancellation for atoms far
        # outside the cell). The distance is taken in float32 from them, as torchmd-net does:
        # its sqrt in float64 differs by 1 ulp, which a 3-layer model amplifies to ~2e-6
        # relative in the energy, beyond the parity tolerance. Exactly 0 on self-loops (zero
        # vectors); the gradient is _EdgeDist's, as for float64 and the static graph (recording
        # the norm in autograd instead cost ~0.3 ms per call on 64 g2 molecules).
        dist = torch.linalg.vector_norm(vec, dim=-1)
    return _attach_grad(pos, boxes, batch, edge_index, shifts, vec, dist)


def reject_coincident(nl: NeighborList) -> None:
    """Raise ``InputError`` when two distinct atoms sit at distance 0 (a pair the model is not
    defined for; self-loops and an atom's own periodic images are not such pairs)."""
    i, j = nl.edge_index
    coincident = (nl.edge_dist == 0) & (i != j)
    if bool(coincident.any()):
        e = int(torch.nonzero(coincident)[0])
        raise InputError(f"atoms {int(i[e])} and {int(j[e])} coincide (distance 0)")


def radius_graph_full(
    pos: Tensor,
    cutoff: float,
    batch: Tensor | None = None,
    box: Tensor | None = None,
    loop: bool = False,
    cutoff_lower: float = 0.0,
    backend: str | None = None,
) -> NeighborList:
    """Radius graph returning the full :class:`NeighborList` (CSR row pointer, integer shifts).

    ``backend``: None (compiled cell list when the extension is built, else the reference),
    ``"compiled"`` or ``"reference"``. Both give the same edges in the same order.
    """
    if _resolve(backend, _device(pos)) == "reference":
        return radius_graph_reference(pos, cutoff, batch, box, loop, cutoff_lower)
    batch, boxes = validate_graph_inputs(pos, cutoff, batch, box, cutoff_lower)
    return _compiled(pos, cutoff, batch, boxes, loop, cutoff_lower)


def radius_graph(
    pos: Tensor,
    cutoff: float,
    batch: Tensor | None = None,
    box: Tensor | None = None,
    loop: bool = False,
    cutoff_lower: float = 0.0,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbour pairs within ``cutoff``: ``(edge_index [2, E], edge_vec [E, 3], edge_dist [E])``.

    ``box`` is [3, 3] (rows a, b, c) or one cell per molecule [n_molecules, 3, 3]; any triclinic
    cell and any cutoff (several images of a pair are separate edges). ``batch`` must be sorted.
    """
    nl = radius_graph_full(pos, cutoff, batch, box, loop, cutoff_lower, backend)
    return nl.edge_index, nl.edge_vec, nl.edge_dist


# ------------------------------------------------------------------ static-capacity radius graph
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
                "a position moved beyond the range the static radius graph was planned for "
                "(max_abs): build a new StaticRadiusGraph from the current positions",
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
        if not compiled_available() or not _compiled_device_ok(_device(pos)):
            raise InputError(
                f"the static radius graph needs the compiled extension for {_device(pos)}"
            )
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise InputError(f"capacity must be an integer >= 0, got {capacity!r}")
        batch, boxes = validate_graph_inputs(pos, cutoff, batch, box, cutoff_lower)
        n = pos.shape[0]
        host = pos.detach().double().cpu()
        extent = float(host.abs().max()) if n else 0.0
        if max_abs is None:
            max_abs = 4.0 * extent + 1000.0 * cutoff
        if not (math.isfinite(max_abs) and max_abs >= extent):
            raise InputError(f"max_abs must be finite and >= {extent}, got {max_abs}")
        box64 = boxes.detach().double().cpu().contiguous() if boxes is not None else None
        self.plan = _OPS.radius_graph_plan(
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
        _OPS.radius_graph_static(
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
        edge_vec, edge_dist = _attach_grad(
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


# ------------------------------------------------------------------------------- Verlet list
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
        if not (math.isfinite(skin) and skin >= 0):
            raise InputError(f"skin must be a finite number >= 0, got {skin}")
        if not math.isfinite(cutoff) or cutoff <= 0:
            raise InputError(f"cutoff must be a positive finite number, got {cutoff}")
        self.cutoff, self.skin, self.loop, self.cutoff_lower = cutoff, skin, loop, cutoff_lower
        self.backend = backend
        self.rebuilds = 0
        self._ref_pos: Tensor | None = None
        self._batch: Tensor | None = None
        self._boxes: Tensor | None = None
        self._cand: NeighborList | None = None

    def _stale(self, pos: Tensor, batch: Tensor, boxes: Tensor | None) -> bool:
        ref = self._ref_pos
        if ref is None or (ref.shape, ref.dtype, ref.device) != (pos.shape, pos.dtype, pos.device):
            return True
        if not torch.equal(self._batch, batch):
            return True
        if (boxes is None) != (self._boxes is None):
            return True
        if boxes is not None and not torch.equal(boxes.detach(), self._boxes):
            return True
        if pos.shape[0] == 0:
            return False
        moved2 = float(((pos.detach() - ref) ** 2).sum(1).max())
        # Rebuild slightly before skin / 2 (1e-9 relative) so rounding can never let a pair in.
        half = 0.5 * self.skin * (1.0 - 1e-9)
        return moved2 > half * half

    def update(
        self, pos: Tensor, batch: Tensor | None = None, box: Tensor | None = None
    ) -> NeighborList:
        backend = _resolve(self.backend, _device(pos))
        batch, boxes = validate_graph_inputs(pos, self.cutoff, batch, box, self.cutoff_lower)
        if self._stale(pos, batch, boxes):
            lower = max(0.0, self.cutoff_lower - self.skin)
            build = _compiled if backend == "compiled" else None
            if build is not None:
                cand = build(pos.detach(), self.cutoff + self.skin, batch, boxes, self.loop, lower)
            else:
                cand = radius_graph_reference(
                    pos.detach(), self.cutoff + self.skin, batch, boxes, self.loop, lower
                )
            self._cand = cand
            self._ref_pos = pos.detach().clone()
            self._batch = batch.clone()
            self._boxes = boxes.detach().clone() if boxes is not None else None
            self.rebuilds += 1
        cand = self._cand
        if backend == "compiled":
            box64 = boxes.detach().double().contiguous() if boxes is not None else None
            edge_index, shifts, vec, dist, row_ptr = _OPS.filter_pairs(
                pos.detach().contiguous(),
                batch.contiguous(),
                box64,
                cand.edge_index,
                cand.shifts,
                float(self.cutoff),
                float(self.cutoff_lower),
                bool(self.loop),
            )
            edge_vec, edge_dist = _edge_tensors(pos, boxes, batch, edge_index, shifts, vec, dist)
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
