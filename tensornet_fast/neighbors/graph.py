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

import torch
from torch import Tensor

from ..errors import InputError


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
