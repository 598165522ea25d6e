"""The neighbour list every search returns, and the input checks every search shares.

Conventions (docs/spec.md "Conventions of this project"): edge e = (i, j), i = edge_index[0]
receives, j = edge_index[1] sends, ``edge_vec = pos[i] - pos[j] + shift @ box``; both directions
of every pair; pairs with ``cutoff_lower <= d < cutoff``; with ``loop=True`` one self-loop (i, i)
per atom with d = 0. Edges are sorted by receiver, then sender, then shift: the same input gives
the same order.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from torch import Tensor

from ..errors import InputError


# ----------------------------------------------------------------------------- budgets
# Every size a search allocates is estimated from the input BEFORE it is allocated, and an input
# over budget raises InputError naming the number and the limit (docs/inputs-and-errors.md).
# Each budget can be raised through its environment variable.
def _budget(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{name} must be a number, got {value!r}") from None


def max_edges() -> int:
    """Edges one search may return (both directions and self-loops counted): 1e8 edges are
    ~5 GB of float32 search output (52 B per edge with the sort keys) before the model's own
    per-edge work; water at liquid density with r_c = 5 A has ~55 edges per atom, so this
    holds ~1.8 million atoms. The compiled search counts while it searches and stops at it."""
    return int(_budget("TENSORNET_FAST_MAX_EDGES", 1e8))


def max_image_visits() -> int:
    """Sum over atoms of the periodic images of their cell within the cutoff
    (prod_k (2 ceil(r_c / plane spacing_k) + 1)): the work of a periodic search. 2.7e8 is
    ~10^4 x a 10^4-atom box with r_c below half its spacings (27 images each)."""
    return int(_budget("TENSORNET_FAST_MAX_IMAGE_VISITS", 2.0**28))


def max_empty_molecules() -> int:
    """Molecule indices without atoms (batch.max() + 1 beyond the atom count): each costs a
    cell grid and output rows; 2^20 of them are ~0.3 GB."""
    return int(_budget("TENSORNET_FAST_MAX_EMPTY_MOLECULES", 2.0**20))


# |coordinate| limit (model length units, A): float64 resolves 1.2e-7 A there, and squares of
# differences stay far from overflow.
MAX_COORDINATE = 1e9
# Periodic positions are wrapped into their cell in float64; 2^20 cells away the wrap's
# rounding is ~2e-10 of a cell vector (2e-9 A for a 10 A cell) and grows linearly beyond.
MAX_CELLS_AWAY = 2**20


def check_molecule_count(n_mol: int, n_atoms: int) -> None:
    """``batch.max() + 1`` molecules for ``n_atoms`` atoms, within the empty-molecule budget."""
    extra = n_mol - n_atoms
    if extra > max_empty_molecules():
        raise InputError(
            f"batch.max() + 1 = {n_mol} molecules for {n_atoms} atoms: {extra} molecule indices "
            f"hold no atom, more than the budget of {max_empty_molecules()} "
            "(TENSORNET_FAST_MAX_EMPTY_MOLECULES); number the molecules 0, 1, 2, ... without gaps"
        )


def check_positions(pos: Tensor, name: str = "positions") -> None:
    """Finite and within MAX_COORDINATE (one reduction, one host read)."""
    if pos.numel() == 0:
        return
    top = float(pos.detach().abs().max())
    if top <= MAX_COORDINATE:
        return
    finite = torch.isfinite(pos.detach()).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise InputError(f"{name} contain NaN or inf (atoms {bad})")
    raise InputError(
        f"{name} reach |x| = {top:.3g}, beyond the limit of {MAX_COORDINATE:g} (length units of "
        "the model, A): such coordinates lose sub-Angstrom resolution; shift the system towards "
        "the origin"
    )


def check_search_size(pos: Tensor, batch: Tensor, boxes: Tensor | None, cutoff: float) -> None:
    """Refuse, before any allocation, a periodic search whose images or edges exceed the
    budgets, or whose positions lie so many cells away that wrapping them loses precision.
    Open molecules are bounded while searching (the edge count is known only then)."""
    if boxes is None or pos.shape[0] == 0:
        return
    n_mol = boxes.shape[0]
    b = boxes.detach().double()
    cross = torch.stack(
        (
            torch.linalg.cross(b[:, 1], b[:, 2]),
            torch.linalg.cross(b[:, 2], b[:, 0]),
            torch.linalg.cross(b[:, 0], b[:, 1]),
        ),
        1,
    )  # [n_mol, 3, 3]: normals of the plane pairs
    volume = (b[:, 0] * cross[:, 0]).sum(-1).abs()  # [n_mol]
    spacing = volume[:, None] / cross.norm(dim=-1)  # [n_mol, 3] plane spacings
    counts = torch.bincount(batch, minlength=n_mol).double()  # [n_mol]
    images = torch.prod(2 * torch.ceil(cutoff / spacing) + 1, dim=1)  # [n_mol]
    far = torch.zeros(n_mol, dtype=torch.float64, device=pos.device)
    far = far.scatter_reduce(0, batch, pos.detach().double().abs().amax(1), "amax")
    cells_away = far / spacing.min(1).values  # >= |fractional coordinate| of every atom
    sphere = 4.0 / 3.0 * math.pi * cutoff**3
    edges = counts * (counts * sphere / volume + 1.0)  # density estimate of the pairs
    stats = torch.stack(((counts * images).sum(), edges.sum(), cells_away.max()))
    visits, n_edges, away = stats.tolist()
    if visits > max_image_visits():
        m = int(torch.argmax(counts * images))
        raise InputError(
            f"the periodic cell of molecule {m} (plane spacings "
            f"{', '.join(f'{x:.3g}' for x in spacing[m].tolist())}) is far smaller than the "
            f"cutoff {cutoff:g}: the search would visit {visits:.3g} periodic images over all "
            f"atoms, more than the budget of {max_image_visits():.3g} "
            "(TENSORNET_FAST_MAX_IMAGE_VISITS); check the box's units and shape"
        )
    if n_edges > max_edges():
        raise InputError(
            f"the periodic system holds about {n_edges:.3g} pairs within the cutoff {cutoff:g} "
            f"(estimated from its density), more than the budget of {max_edges():.3g} edges "
            "(TENSORNET_FAST_MAX_EDGES); check the box's units and the cutoff"
        )
    if away > MAX_CELLS_AWAY:
        raise InputError(
            f"positions lie up to {away:.3g} cells away from their periodic cell (limit "
            f"{MAX_CELLS_AWAY}): wrapping them in float64 would lose precision; wrap the "
            "positions into the cell first"
        )


@dataclasses.dataclass
class NeighborList:
    edge_index: Tensor  # [2, E] int64, sorted by receiver i = edge_index[0]
    edge_vec: Tensor  # [E, 3] pos[i] - pos[j] + shift @ box (differentiable)
    edge_dist: Tensor  # [E] |edge_vec|, exactly 0 on self-loops (differentiable elsewhere)
    shifts: Tensor  # [E, 3] integer lattice shifts (as pos dtype), 0 without a box
    row_ptr: Tensor  # [N + 1] CSR row pointer over receivers
    # [E] bool, False on padding slots of a fixed-capacity list (their index is clamped to a
    # real atom and their vector is a constant far beyond every cutoff); None: all are edges.
    valid: Tensor | None = None

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def select(self, keep: Tensor) -> NeighborList:
        """The edges where ``keep`` [E] is True, in the same order, with their CSR (eager only:
        the edge count depends on the data)."""
        n = self.row_ptr.shape[0] - 1
        i = self.edge_index[0][keep]
        row_ptr = torch.zeros_like(self.row_ptr)
        row_ptr[1:] = torch.cumsum(torch.bincount(i, minlength=n), 0)
        valid = None if self.valid is None else self.valid[keep]
        return NeighborList(
            self.edge_index[:, keep],
            self.edge_vec[keep],
            self.edge_dist[keep],
            self.shifts[keep],
            row_ptr,
            valid,
        )


def validate_graph_inputs(
    pos: Tensor, cutoff: float, batch: Tensor | None, box: Tensor | None, cutoff_lower: float
) -> tuple[Tensor, Tensor | None]:
    """Check shapes, dtypes and values; return (batch [N] int64, box [B, 3, 3] or None)."""
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise InputError(f"pos must be a [n_atoms, 3] tensor, got {shape}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise InputError(f"pos must be float32 or float64, got {pos.dtype}")
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
        raise InputError(f"cutoff must be a positive finite number, got {cutoff!r}")
    if isinstance(cutoff_lower, bool) or not isinstance(cutoff_lower, (int, float)):
        raise InputError(f"cutoff_lower must be a number >= 0, got {cutoff_lower!r}")
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise InputError(f"cutoff must be a positive finite number, got {cutoff}")
    if not (0 <= cutoff_lower < cutoff):
        raise InputError(f"need 0 <= cutoff_lower < cutoff, got {cutoff_lower} and {cutoff}")
    check_positions(pos)
    n = pos.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=pos.device)
    else:
        if not isinstance(batch, Tensor):
            raise InputError(
                f"batch must be an integer tensor of shape [{n}], got {type(batch).__name__}"
            )
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
        if n:
            check_molecule_count(int(batch[-1]) + 1, n)
    if box is not None:
        n_mol = int(batch.max()) + 1 if n else 0
        box = box_per_molecule(box, n_mol, pos)
        check_search_size(pos, batch, box, cutoff)
    return batch, box


def box_per_molecule(box, n_mol: int, pos: Tensor) -> Tensor:
    """Validate a [3, 3] or [n_molecules, 3, 3] cell (rows a, b, c) -> [n_molecules, 3, 3].
    A numpy array or nested list is converted to a tensor of ``pos``'s dtype and device."""
    if not isinstance(box, Tensor):
        try:
            box = torch.as_tensor(box, dtype=pos.dtype, device=pos.device)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(
                f"box must be a [3, 3] or [n_molecules, 3, 3] array of cell rows, got "
                f"{type(box).__name__}"
            ) from None
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
    b = box.detach().double()
    det = torch.linalg.det(b)
    # Singular relative to the product of the row lengths (|det| = |a||b||c| for orthogonal
    # rows): a skewed but valid cell keeps a ratio far above rounding (216 A^3 from rows of
    # 6, 60, 6 A: 0.1); 1e-12 is where float64 no longer separates the planes.
    lengths = b.norm(dim=2).prod(1)
    singular = (det.abs() <= 1e-12 * lengths) | (lengths == 0)
    if bool(singular.any()):
        m = int(torch.nonzero(singular)[0])
        raise InputError(
            f"box{'' if box.shape[0] == 1 else f' of molecule {m}'} is singular (volume "
            f"{float(det[m]):.3g} for rows of lengths "
            f"{', '.join(f'{x:.3g}' for x in b[m].norm(dim=1).tolist())}): its rows a, b, c "
            "must span 3D space"
        )
    return box


def safe_norm(vec: Tensor, is_self: Tensor) -> Tensor:
    """|vec| with an exact 0 (and a zero gradient) on self-loops, whose vector is 0."""
    safe = torch.where(is_self[:, None], torch.ones_like(vec), vec)
    return torch.where(is_self, torch.zeros_like(vec[:, 0]), safe.norm(dim=-1))


def reject_coincident(nl: NeighborList) -> None:
    """Raise ``InputError`` when two distinct atoms sit at distance 0 (a pair the model is not
    defined for; self-loops and an atom's own periodic images are not such pairs)."""
    i, j = nl.edge_index
    coincident = (nl.edge_dist == 0) & (i != j)
    if bool(coincident.any()):
        e = int(torch.nonzero(coincident)[0])
        raise InputError(f"atoms {int(i[e])} and {int(j[e])} coincide (distance 0)")
