"""Energy, forces and stress on a GIVEN edge list, written so that it can be traced: no host
synchronisation, no data-dependent Python control flow, fixed shapes for fixed inputs.

It is the one core under three features:
- ``tensornet_fast.compiled`` (``torch.compile(fullgraph=True)``; the neighbour list is built
  eagerly outside the compiled region),
- ``tensornet_fast.export`` (make_fx + torch.export + AOTInductor; the neighbour search is the
  pure-aten :func:`dense_edges` inside the graph),
- ``tensornet_fast.md`` (a static-capacity Verlet list whose padded edges have fixed shapes, so
  the step can be captured in a CUDA graph).

Edges may carry MORE pairs than the cutoff (Verlet candidates, padding): every contribution of an
edge is multiplied by the cosine cutoff phi(d), which is exactly 0 (value and gradient) for
d >= cutoff_upper and, with a lower cutoff, for d <= cutoff_lower, so extra edges add exact zeros
and the sums keep their order (edges sorted by receiver). Padding edges (``valid == False``) get
a constant vector of length ``2 * max_cutoff`` that does not depend on the positions. Pair priors
(ZBL, D2) select their pairs with explicit masks. This is what makes the results equal those of
the eager model (which passes exactly the pairs within the cutoff) to rounding.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..backends.reference import math as reference
from ..backends.triton import backend as triton_backend
from ..model.priors import d2_from_edges, zbl_from_edges
from ..neighbors import NeighborList, safe_norm

# Backends whose math can be traced (torch.compile / export / CUDA-graph capture): the reference
# math, and the Triton kernels (custom ops with fake implementations, run with static=True). The
# "cpu" backend runs host-side C++ edge loops with Python bookkeeping (torch.unique, chunking)
# and cannot be captured.
TRACEABLE_BACKENDS = ("reference", "triton")


class NotTraceable(NotImplementedError):
    pass


def check_traceable(model, what: str) -> None:
    if model.backend not in TRACEABLE_BACKENDS:
        raise NotTraceable(
            f"{what} needs a traceable backend ({', '.join(TRACEABLE_BACKENDS)}); this model "
            f"uses backend={model.backend!r}, whose edge kernels run as host code that cannot be "
            "traced. Load the model with backend='reference' (torch.compile / CUDA graphs then "
            "fuse the reference math themselves) or backend='triton' (CUDA)."
        )
    if model.backend == "triton":
        # Import the kernel modules now, not inside the trace: the lazy import fills a module
        # global that Dynamo guards on, and the second call of a compiled model recompiled.
        triton_backend.load_kernels()


@dataclasses.dataclass
class Edges:
    """A (possibly padded, possibly over-complete) edge list sorted by receiver."""

    edge_index: Tensor  # [2, E] int64
    shifts: Tensor | None = None  # [E, 3] integer lattice shifts in pos dtype; None: no box
    valid: Tensor | None = None  # [E] bool; None: all edges are real


def max_cutoff(model) -> float:
    """The largest distance any part of the model looks at (network and pair priors)."""
    cut = model.config.cutoff_upper
    for spec, prior in zip(model.config.priors, model.prior_model or []):
        if spec.name in ("ZBL", "D2"):
            cut = max(cut, prior.cutoff_distance)
    return cut


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
    if edges.valid is not None:
        far = torch.zeros(1, 3, dtype=pos.dtype, device=pos.device)
        far[0, 0] = 2.0 * max_cutoff(model) + 1.0
        vec = torch.where(edges.valid[:, None], vec, far)
        is_self = is_self & edges.valid
    return vec, safe_norm(vec, is_self), is_self, zero_shift


def potential(
    model,
    z: Tensor,
    pos: Tensor,
    batch: Tensor,
    n_mol: int,
    atoms_per_mol: Tensor,
    charge_factor: Tensor,
    edges: Edges,
    cell: Tensor | None = None,
) -> Tensor:
    """Energies [n_mol, 1], reduced exactly as ``TensorNetModel.reduce_energy`` does.

    ``edges`` must contain every pair within the cutoffs (and the self-loops); ``cell``
    [n_mol, 3, 3] when the edges carry lattice shifts; ``atoms_per_mol`` [n_mol] (for
    ``reduce_op="mean"``)."""
    vec, dist, is_self, zero_shift = edge_geometry(model, pos, batch, cell, edges)
    if model.backend == "triton" and triton_backend.supports_device(pos.device):
        # CSR row pointer of the receiver-sorted edges (padding edges point at the last atom)
        receivers = edges.edge_index[0].contiguous()
        row_ptr = torch.searchsorted(receivers, torch.arange(z.shape[0] + 1, device=z.device))
        nl = NeighborList(edges.edge_index, vec, dist, vec, row_ptr)
        eps = triton_backend.atomic_energies(model, z, nl, charge_factor, static=True)
    else:
        eps = reference.atomic_energies(
            model.representation_model,
            model.output_model.output_network.layers,
            model.config,
            z,
            edges.edge_index,
            vec,
            dist,
            charge_factor,
        )
    eps = model._scaled_outputs(eps, z)
    # scatter_add, not index_add: same sums in the same order, but Inductor (torch 2.13, CPU,
    # dynamic shapes) fails to generate code for an index_add into a size-1 output (n_mol = 1).
    y = torch.zeros(n_mol, 1, dtype=eps.dtype, device=eps.device).scatter_add(
        0, batch[:, None], eps
    )
    if model.config.reduce_op == "mean":
        y = y / (atoms_per_mol.to(eps.dtype) + 1)[:, None]
    y = y + model.mean
    i = edges.edge_index[0]
    real = ~is_self if edges.valid is None else edges.valid & ~is_self
    for spec, prior in zip(model.config.priors, model.prior_model or []):
        if spec.name not in ("ZBL", "D2"):
            continue
        keep = real & (dist < prior.cutoff_distance)
        if spec.name == "D2":  # D2 ignores periodic images (torchmd-net 3.1)
            keep = keep & zero_shift
        safe = torch.where(keep, dist, torch.ones_like(dist))
        fn = zbl_from_edges if spec.name == "ZBL" else d2_from_edges
        pair = torch.where(keep, fn(prior, z, edges.edge_index, safe), torch.zeros_like(dist))
        mol = batch.index_select(0, i)
        y = y + torch.zeros_like(y[:, 0]).scatter_add(0, mol, pair)[:, None]
    return y


def energy_forces_stress(
    model,
    z: Tensor,
    pos: Tensor,
    batch: Tensor,
    n_mol: int,
    atoms_per_mol: Tensor,
    charge_factor: Tensor,
    edges: Edges,
    cell: Tensor | None = None,
    stress: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(energy [n_mol, 1], forces [N, 3], stress [n_mol, 3, 3] or None), forces = -dE/dpos and
    stress = (1/V) dE/d(strain) symmetrised, as ``TensorNetModel.compute``."""
    with torch.enable_grad():
        leaf = pos.detach().requires_grad_(True)
        positions, deformed = leaf, cell
        if stress:
            strain = torch.zeros_like(cell).requires_grad_(True)
            deform = torch.eye(3, dtype=cell.dtype, device=cell.device) + strain
            positions = torch.einsum("na,nab->nb", leaf, deform.index_select(0, batch))
            deformed = cell @ deform
        energy = potential(
            model, z, positions, batch, n_mol, atoms_per_mol, charge_factor, edges, deformed
        )
        inputs = [leaf, strain] if stress else [leaf]
        grads = torch.autograd.grad(energy.sum(), inputs)
    sigma = None
    if stress:
        volume = det3(cell.detach()).abs()
        virial = grads[1]
        sigma = 0.5 * (virial + virial.transpose(1, 2)) / volume[:, None, None]
    return energy.detach(), -grads[0], sigma


def det3(cells: Tensor) -> Tensor:
    """Determinants of [..., 3, 3] cells as triple products (plain aten ops; no LAPACK call in
    exported graphs)."""
    return (cells[..., 0, :] * torch.linalg.cross(cells[..., 1, :], cells[..., 2, :])).sum(-1)


def inv3(b: Tensor) -> Tensor:
    """Inverse of one [3, 3] cell (rows a, b, c) by its adjugate: columns b x c, c x a, a x b."""
    cols = (
        torch.linalg.cross(b[1], b[2]),
        torch.linalg.cross(b[2], b[0]),
        torch.linalg.cross(b[0], b[1]),
    )
    return torch.stack(cols, dim=1) / det3(b)


def dense_edges(pos: Tensor, cutoff: float, box: Tensor | None = None, images: int = 1) -> Edges:
    """All pairs (and self-loops) of ONE molecule within ``cutoff`` by a brute-force search in
    plain aten ops (``nonzero`` gives a data-dependent edge count), sorted by receiver, sender,
    shift -- the order of :func:`tensornet_fast.radius_graph`. Traceable by make_fx / export.

    ``box`` [3, 3]: periodic, with lattice shifts -images..images per axis applied to the
    wrapped positions; exact when every plane spacing of the cell is >= cutoff / images.
    Memory O(N^2 (2 images + 1)^3): meant for molecules and small cells."""
    n = pos.shape[0]
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
