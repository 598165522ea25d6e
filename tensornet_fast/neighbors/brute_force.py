"""The brute-force radius graph in plain PyTorch: O(N^2 x images) per molecule, in row chunks
to bound memory. What the compiled search is tested against, and its fallback without the
extension. Exact for any triclinic cell and any cutoff (every periodic image within the cutoff is
a separate edge)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .graph import NeighborList, max_edges, safe_norm, validate_graph_inputs

# Row chunk of the brute-force search: chunk * n_atoms * n_images candidate pairs at most.
_MAX_CANDIDATES = 1 << 22


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
    budget: list[int],
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
    n_shifts = shifts.shape[0]
    # blocks of rows x shifts with at most _MAX_CANDIDATES candidate pairs each
    s_chunk = max(1, min(n_shifts, _MAX_CANDIDATES // max(1, n)))
    chunk = max(1, _MAX_CANDIDATES // max(1, n * s_chunk))
    cut2, low2 = cutoff * cutoff, cutoff_lower * cutoff_lower
    found_i, found_j, found_s = [], [], []
    cols = torch.arange(n, device=p.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk), device=p.device)
        for s0 in range(0, n_shifts, s_chunk):
            sv = shift_vecs[s0 : s0 + s_chunk]
            diff = p[rows, None, None, :] - p[None, :, None, :] + sv[None, None]  # [c, N, s, 3]
            d2 = (diff * diff).sum(-1)
            keep = (d2 < cut2) & (d2 >= low2)
            sid = torch.arange(s0, s0 + sv.shape[0], device=p.device)
            is_self = (rows[:, None] == cols[None, :])[..., None] & (sid == zero_shift)
            keep &= ~is_self
            ci, cj, cs = keep.nonzero(as_tuple=True)
            budget[0] -= ci.shape[0]
            if budget[0] < 0:
                raise InputError(
                    f"the radius graph has more than {max_edges():.3g} edges, the budget "
                    "(TENSORNET_FAST_MAX_EDGES); check the positions' units and the cutoff"
                )
            found_i.append(rows[ci])
            found_j.append(cj)
            found_s.append(cs + s0)
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
    budget = [max_edges()]  # edges left, counted down while searching
    if n:
        counts = torch.bincount(batch)
        starts = torch.cumsum(counts, 0) - counts
        for mol in torch.nonzero(counts).flatten().tolist():
            lo, cnt = int(starts[mol]), int(counts[mol])
            mol_box = boxes[mol] if boxes is not None else None
            i, j, s = _molecule_pairs(
                pos[lo : lo + cnt], mol_box, cutoff, cutoff_lower, loop, budget
            )
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
