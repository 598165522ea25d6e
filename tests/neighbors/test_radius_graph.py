"""Radius graph: the compiled cell-list search against trusted references.

References: an independent float64 brute force over all periodic images written here, the
PyTorch reference search (backend="reference"), ASE's neighbor_list and vesin. Pair sets are
compared exactly (indices and integer shifts), distances to rounding.
"""

from __future__ import annotations

import glob
import itertools
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from paths import ROOT

from tensornet_fast.errors import InputError, NeighborListOverflowError
from tensornet_fast.neighbors import (
    StaticRadiusGraph,
    VerletList,
    radius_graph,
    radius_graph_full,
    radius_graph_reference,
    radius_graph_static,
)
from tensornet_fast.neighbors import search as neighbors


# ------------------------------------------------------------------------------ brute force
def brute_force(pos, cutoff, batch=None, box=None, loop=False, cutoff_lower=0.0):
    """fp64 O(N^2 * images) search: sorted int64 array [E, 5] of (i, j, s0, s1, s2) and the
    distance of each row. Every pair enumerates the shifts around its nearest image, wide
    enough (ceil(cutoff / plane spacing) + 1 per axis) to hold every image within the cutoff."""
    pos = np.asarray(pos, dtype=np.float64)
    n = len(pos)
    batch = np.zeros(n, dtype=np.int64) if batch is None else np.asarray(batch)
    rows, dists = [], []
    n_mol = int(batch.max()) + 1 if n else 0
    for m in range(n_mol):
        idx = np.nonzero(batch == m)[0]
        if len(idx) == 0:
            continue
        x = pos[idx]
        if box is None:
            cell = None
            shifts = np.zeros((1, 3))
        else:
            b = np.asarray(box, dtype=np.float64)
            cell = b[m] if b.ndim == 3 else b
            inv = np.linalg.inv(cell)
            spacing = 1.0 / np.linalg.norm(inv, axis=0)
            reach = np.ceil(cutoff / spacing).astype(int) + 1
            shifts = np.array(
                list(itertools.product(*[range(-r, r + 1) for r in reach])), dtype=np.float64
            )
        ii, jj = np.meshgrid(np.arange(len(idx)), np.arange(len(idx)), indexing="ij")
        ii, jj = ii.ravel(), jj.ravel()
        diff = x[ii] - x[jj]  # [P, 3]
        if cell is not None:
            frac = x @ np.linalg.inv(cell)
            center = -np.round(frac[ii] - frac[jj])  # shift to the nearest image
            s = center[:, None, :] + shifts[None, :, :]  # [P, S, 3]
            # Same association as the C++ test: (x_i - x_j) + (s0 a + s1 b + s2 c).
            sv = s[..., 0:1] * cell[0] + s[..., 1:2] * cell[1] + s[..., 2:3] * cell[2]
            vec = diff[:, None, :] + sv
        else:
            s = np.zeros((len(ii), 1, 3))
            vec = diff[:, None, :]
        d2 = (vec * vec).sum(-1)
        is_self = (ii == jj)[:, None] & (s == 0).all(-1)
        keep = (d2 < cutoff * cutoff) & (d2 >= cutoff_lower * cutoff_lower) & ~is_self
        if loop:
            keep |= is_self
        p, k = np.nonzero(keep)
        rows.append(np.column_stack((idx[ii[p]], idx[jj[p]], s[p, k].astype(np.int64))))
        dists.append(np.where(is_self[p, k], 0.0, np.sqrt(d2[p, k])))
    if not rows:
        return np.zeros((0, 5), dtype=np.int64), np.zeros(0)
    rows, dists = np.concatenate(rows), np.concatenate(dists)
    order = np.lexsort(rows.T[::-1])
    return rows[order], dists[order]


def as_rows(nl) -> np.ndarray:
    """(i, j, s0, s1, s2) int64 rows of a NeighborList, in its own order."""
    s = nl.shifts.detach().cpu().double().numpy()
    assert np.array_equal(s, np.round(s)), "shifts must be integers"
    return np.column_stack((nl.edge_index.cpu().numpy().T, s.astype(np.int64)))


def check_structure(nl, n_atoms):
    rows = as_rows(nl)
    if len(rows):
        order = np.lexsort(rows.T[::-1])
        assert np.array_equal(order, np.arange(len(rows))), "edges not sorted by (i, j, shift)"
        assert len(np.unique(rows, axis=0)) == len(rows), "duplicate edges"
    counts = np.bincount(rows[:, 0], minlength=n_atoms) if len(rows) else np.zeros(n_atoms, int)
    assert np.array_equal(nl.row_ptr.numpy(), np.concatenate(([0], np.cumsum(counts))))
    assert nl.edge_index.dtype == torch.int64 and nl.row_ptr.dtype == torch.int64


def assert_matches_brute(pos, cutoff, batch=None, box=None, loop=False, cutoff_lower=0.0):
    nl = radius_graph_full(pos, cutoff, batch, box, loop, cutoff_lower)
    check_structure(nl, pos.shape[0])
    box64 = None if box is None else box.double().numpy()
    b = None if batch is None else batch.numpy()
    rows, dist = brute_force(pos.double().numpy(), cutoff, b, box64, loop, cutoff_lower)
    got = as_rows(nl)
    assert got.shape == rows.shape, (got.shape, rows.shape)
    assert np.array_equal(got, rows)
    # Vectors: pos[i] - pos[j] + shift @ box of this molecule.
    i, j = nl.edge_index
    vec = pos[i].double() - pos[j].double()
    if box is not None:
        mol = batch[i] if batch is not None else torch.zeros_like(i)
        n_mol = int(batch.max()) + 1 if batch is not None and len(batch) else 1
        cells = box.double() if box.dim() == 3 else box.double().expand(n_mol, 3, 3)
        vec = vec + torch.einsum("ea,eab->eb", nl.shifts.double(), cells[mol])
    tol = 1e-12 if pos.dtype == torch.float64 else 2e-6
    scale = 1.0 + float(pos.double().abs().max()) * (1e-16 if pos.dtype == torch.float64 else 0)
    np.testing.assert_allclose(
        nl.edge_vec.double().numpy(), vec.numpy(), rtol=tol, atol=tol * scale
    )
    np.testing.assert_allclose(nl.edge_dist.double().numpy(), dist, rtol=tol, atol=tol * scale)
    assert nl.edge_vec.dtype == pos.dtype and nl.edge_dist.dtype == pos.dtype
    return nl


# --------------------------------------------------------------------------------- systems
def random_cell(rng, skew=0.0, scale=6.0):
    cell = np.diag(rng.uniform(0.8, 1.2, 3) * scale)
    cell[1, 0] = skew * scale * rng.uniform(0.5, 1.0)
    cell[2, 0] = -skew * scale * rng.uniform(0.3, 0.8)
    cell[2, 1] = skew * scale * rng.uniform(0.3, 0.8)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # general orientation, not lower-triangular
    return cell @ rot


def system(kind, dtype=torch.float64, seed=0):
    """(pos, cutoff, box) for a named case."""
    rng = np.random.default_rng(seed)
    if kind == "open":
        return torch.tensor(rng.uniform(0, 8, (80, 3)), dtype=dtype), 3.0, None
    if kind == "open_large_coords":
        pos = rng.uniform(0, 8, (60, 3)) + np.array([1.0e6, -3.0e5, 2.5e6])
        return torch.tensor(pos, dtype=dtype), 3.0, None
    if kind == "open_sparse":  # huge spread: bins must be capped, not 1e6^3 of them
        pos = np.concatenate((rng.uniform(0, 4, (20, 3)), rng.uniform(-1e5, 1e5, (20, 3))))
        return torch.tensor(pos, dtype=dtype), 2.5, None
    if kind == "ortho":
        cell = np.diag([7.0, 8.0, 9.0])
    elif kind == "triclinic":
        cell = random_cell(rng, skew=0.45)
    elif kind == "tiny_multi_image":  # cutoff spans several cells
        cell = random_cell(rng, skew=0.3, scale=2.2)
    elif kind == "outside_cell":
        cell = random_cell(rng, skew=0.3, scale=5.0)
    elif kind == "periodic_large_coords":
        cell = random_cell(rng, skew=0.2, scale=6.0)
    else:
        raise KeyError(kind)
    n = {"tiny_multi_image": 6}.get(kind, 70)
    frac = rng.uniform(0, 1, (n, 3))
    if kind == "outside_cell":
        frac = frac * 7 - 3  # up to 3 cells away on either side
    if kind == "periodic_large_coords":
        frac = frac + rng.integers(-100000, 100000, (n, 3))
    cutoff = {"tiny_multi_image": 4.5}.get(kind, 3.2)
    return torch.tensor(frac @ cell, dtype=dtype), cutoff, torch.tensor(cell, dtype=dtype)


KINDS = [
    "open",
    "open_large_coords",
    "open_sparse",
    "ortho",
    "triclinic",
    "tiny_multi_image",
    "outside_cell",
    "periodic_large_coords",
]


# ------------------------------------------------------------------------------------ tests
def test_extension_is_built_and_used():
    """The compiled search must be what runs on this machine (no silent reference fallback)."""
    assert neighbors.compiled_available(), "tensornet_fast._C did not import: build it"
    assert neighbors.resolve_search(None, torch.device("cpu")) == "compiled"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loop,lower", [(False, 0.0), (True, 1.1)])
def test_matches_brute_force(kind, dtype, loop, lower):
    pos, cutoff, box = system(kind, dtype)
    nl = assert_matches_brute(pos, cutoff, box=box, loop=loop, cutoff_lower=lower)
    assert nl.num_edges > 0


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_search(kind):
    pos, cutoff, box = system(kind, torch.float64, seed=3)
    for loop in (False, True):
        a = radius_graph_full(pos, cutoff, box=box, loop=loop)
        b = radius_graph_reference(pos, cutoff, box=box, loop=loop)
        assert torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.shifts, b.shifts)
        assert torch.equal(a.row_ptr, b.row_ptr)
        torch.testing.assert_close(a.edge_vec, b.edge_vec, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(a.edge_dist, b.edge_dist, rtol=1e-12, atol=1e-9)


def test_reference_backend_argument_and_float32_agreement():
    pos, cutoff, box = system("triclinic", torch.float32, seed=5)
    a = radius_graph_full(pos, cutoff, box=box, loop=True)
    b = radius_graph_full(pos, cutoff, box=box, loop=True, backend="reference")
    # fp32: the reference decides in fp32, ours in fp64; only pairs within rounding of the
    # cutoff may differ, and random data has none.
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.shifts, b.shifts)
    torch.testing.assert_close(a.edge_dist, b.edge_dist, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("n_mol", [1, 7, 128])
@pytest.mark.parametrize("periodic", [True, False])
def test_batches_with_per_molecule_boxes(n_mol, periodic):
    rng = np.random.default_rng(n_mol)
    sizes = rng.integers(1, 14, n_mol)
    sizes[0] = 1  # one-atom molecules are valid
    batch = torch.tensor(np.repeat(np.arange(n_mol), sizes))
    cells = np.stack(
        [random_cell(rng, skew=0.3, scale=rng.uniform(2.5, 7.0)) for _ in range(n_mol)]
    )
    pos = np.concatenate([rng.uniform(-0.5, 1.5, (s, 3)) @ cells[m] for m, s in enumerate(sizes)])
    pos, box = torch.tensor(pos), torch.tensor(cells) if periodic else None
    nl = assert_matches_brute(pos, 3.5, batch=batch, box=box, loop=True)
    # No edge crosses molecules.
    assert torch.equal(batch[nl.edge_index[0]], batch[nl.edge_index[1]])
    # One shared [3, 3] box broadcasts to every molecule.
    if periodic:
        assert_matches_brute(pos, 3.5, batch=batch, box=box[0], loop=False)


def test_batch_with_empty_molecule_ids():
    pos = torch.tensor(np.random.default_rng(0).uniform(0, 3, (10, 3)))
    batch = torch.tensor([0, 0, 0, 2, 2, 2, 2, 5, 5, 5])  # molecules 1, 3, 4 are empty
    assert_matches_brute(pos, 2.0, batch=batch, loop=True)
    box = torch.eye(3, dtype=torch.float64).expand(6, 3, 3) * 3.0
    assert_matches_brute(pos, 2.0, batch=batch, box=box.contiguous(), loop=True)


def test_atoms_exactly_at_the_cutoff():
    """Simple cubic lattice, spacing 1, in a 4 x 4 x 4 periodic box: every number is exact in
    binary, so d = 2 (6 neighbours) is exactly the cutoff and must be excluded (d < cutoff)."""
    g = np.arange(4.0)
    pos = torch.tensor(np.array(list(itertools.product(g, g, g))))
    box = torch.eye(3, dtype=torch.float64) * 4.0
    nl = assert_matches_brute(pos, 2.0, box=box)
    per_atom = torch.diff(nl.row_ptr)
    assert bool((per_atom == 26).all())  # shells 1 (6), sqrt 2 (12), sqrt 3 (8); 2 excluded
    assert float(nl.edge_dist.max()) < 2.0
    # cutoff_lower is inclusive: d = 1 stays at cutoff_lower = 1, goes just above it.
    at_one = radius_graph_full(pos, 2.0, box=box, cutoff_lower=1.0)
    assert bool((torch.diff(at_one.row_ptr) == 26).all())
    above = radius_graph_full(pos, 2.0, box=box, cutoff_lower=1.0 + 1e-12)
    assert bool((torch.diff(above.row_ptr) == 20).all())
    # Open boundaries, float32: the same exact lattice.
    nl32 = assert_matches_brute(pos.float(), 2.0)
    assert float(nl32.edge_dist.max()) < 2.0


def test_coincident_atoms():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    nl = assert_matches_brute(pos, 1.5, loop=True)
    i, j = nl.edge_index
    zero = (nl.edge_dist == 0) & (i != j)
    assert int(zero.sum()) == 4  # (0,1), (1,0), (2,3), (3,2)
    box = torch.eye(3) * 3.0
    assert_matches_brute(pos, 1.5, box=box, loop=True)


def test_empty_and_single_atom():
    for box in (None, torch.eye(3, dtype=torch.float64) * 5):
        nl = radius_graph_full(torch.zeros(0, 3, dtype=torch.float64), 3.0, box=box, loop=True)
        assert nl.num_edges == 0 and nl.row_ptr.tolist() == [0]
        assert nl.edge_vec.shape == (0, 3) and nl.edge_dist.shape == (0,)
    one = torch.zeros(1, 3, dtype=torch.float64)
    nl = radius_graph_full(one, 3.0, loop=True)
    assert nl.edge_index.tolist() == [[0], [0]] and float(nl.edge_dist[0]) == 0.0
    assert radius_graph_full(one, 3.0).num_edges == 0
    # One atom in a small periodic box: its own images are ordinary edges, plus the self-loop.
    nl = assert_matches_brute(one, 3.0, box=torch.eye(3, dtype=torch.float64) * 2.0, loop=True)
    assert nl.num_edges == 1 + 6 + 12  # self-loop, 6 images at 2, 12 at 2 sqrt 2 < 3


def test_matches_ase_and_vesin():
    ase_nl = pytest.importorskip("ase.neighborlist")
    ase = pytest.importorskip("ase")
    vesin = pytest.importorskip("vesin")
    rng = np.random.default_rng(11)
    cell = random_cell(rng, skew=0.4, scale=9.0)
    pos = rng.uniform(-0.2, 1.2, (300, 3)) @ cell  # some atoms outside the cell
    cutoff = 4.0
    for periodic in (True, False):
        nl = radius_graph_full(
            torch.tensor(pos), cutoff, box=torch.tensor(cell) if periodic else None
        )
        ours = as_rows(nl)
        atoms = ase.Atoms("H" * len(pos), positions=pos, cell=cell, pbc=periodic)
        i, j, S, d = ase_nl.neighbor_list("ijSd", atoms, cutoff, self_interaction=False)
        # ASE/vesin vectors are pos[j] - pos[i] + S @ cell: our shift is -S.
        ref = np.column_stack((i, j, -S)).astype(np.int64)
        order = np.lexsort(ref.T[::-1])
        assert np.array_equal(ours, ref[order])
        np.testing.assert_allclose(nl.edge_dist.numpy(), d[order], rtol=1e-12)
        calc = vesin.NeighborList(cutoff=cutoff, full_list=True)
        vi, vj, vS, vd = calc.compute(pos, cell, periodic, "ijSd")
        vref = np.column_stack((vi, vj, -vS)).astype(np.int64)
        vorder = np.lexsort(vref.T[::-1])
        assert np.array_equal(ours, vref[vorder])
        np.testing.assert_allclose(nl.edge_dist.numpy(), vd[vorder], rtol=1e-12)


def water_box(n_molecules, seed=0):
    """Rotated water molecules on a cubic grid at 0.0334 molecules / A^3 (tests and benchmark)."""
    from bench.bench_radius_graph import water_system

    return water_system(n_molecules * 3, seed=seed)


def test_water_box_against_vesin():
    vesin = pytest.importorskip("vesin")
    pos, box = water_box(1000)
    nl = radius_graph_full(torch.tensor(pos), 5.0, box=torch.tensor(box))
    vi, vj, vS, vd = vesin.NeighborList(cutoff=5.0, full_list=True).compute(pos, box, True, "ijSd")
    vref = np.column_stack((vi, vj, -vS)).astype(np.int64)
    vorder = np.lexsort(vref.T[::-1])
    assert np.array_equal(as_rows(nl), vref[vorder])
    np.testing.assert_allclose(nl.edge_dist.numpy(), vd[vorder], rtol=1e-12)


def test_deterministic():
    pos, cutoff, box = system("triclinic", seed=7)
    pos = pos.repeat(20, 1) + torch.randn(pos.shape[0] * 20, 3, dtype=pos.dtype) * 5
    a = radius_graph_full(pos, cutoff, box=box, loop=True)
    for _ in range(2):
        b = radius_graph_full(pos, cutoff, box=box, loop=True)
        for x, y in zip(
            (a.edge_index, a.edge_vec, a.edge_dist, a.shifts, a.row_ptr),
            (b.edge_index, b.edge_vec, b.edge_dist, b.shifts, b.row_ptr),
        ):
            assert torch.equal(x, y)


def test_radius_graph_tuple_api():
    pos, cutoff, box = system("ortho")
    ei, vec, dist = radius_graph(pos, cutoff, box=box)
    nl = radius_graph_full(pos, cutoff, box=box)
    assert torch.equal(ei, nl.edge_index) and torch.equal(vec, nl.edge_vec)
    assert torch.equal(dist, nl.edge_dist)


@pytest.mark.parametrize("periodic", [False, True])
def test_gradients(periodic):
    rng = np.random.default_rng(2)
    cell = torch.tensor(random_cell(rng, skew=0.3, scale=3.0), requires_grad=periodic)
    pos = torch.tensor(rng.uniform(0, 3, (8, 3)), requires_grad=True)

    def energy(p, c):
        nl = radius_graph_full(p, 2.6, box=c if periodic else None, loop=True)
        return (torch.sin(nl.edge_vec).sum(1) * torch.exp(-nl.edge_dist)).sum()

    inputs = (pos, cell)
    assert torch.autograd.gradcheck(energy, inputs)
    assert torch.autograd.gradgradcheck(energy, inputs)
    # Same gradients as autograd through the reference search, self-loops included (d = 0).
    g = torch.autograd.grad(energy(pos, cell), pos)[0]

    def energy_ref(p, c):
        nl = radius_graph_reference(p, 2.6, box=c if periodic else None, loop=True)
        return (torch.sin(nl.edge_vec).sum(1) * torch.exp(-nl.edge_dist)).sum()

    torch.testing.assert_close(g, torch.autograd.grad(energy_ref(pos, cell), pos)[0])
    # Self-loops: d == 0 exactly with a zero (not NaN) gradient.
    nl = radius_graph_full(pos, 2.6, loop=True)
    self_d = nl.edge_dist[nl.edge_index[0] == nl.edge_index[1]]
    assert bool((self_d == 0).all())
    (gd,) = torch.autograd.grad(self_d.sum(), pos)
    assert bool(torch.isfinite(gd).all()) and float(gd.abs().max()) == 0.0


def test_no_grad_when_not_needed():
    pos, cutoff, box = system("ortho")
    nl = radius_graph_full(pos, cutoff, box=box)
    assert nl.edge_vec.grad_fn is None and not nl.edge_vec.requires_grad


@pytest.mark.parametrize("periodic", [True, False])
def test_verlet_list_equals_fresh_build(periodic):
    rng = np.random.default_rng(4)
    cell = random_cell(rng, skew=0.3, scale=7.0)
    pos = torch.tensor(rng.uniform(0, 1, (60, 3)) @ cell)
    box = torch.tensor(cell) if periodic else None
    cutoff, skin = 3.0, 0.6
    vl = VerletList(cutoff, skin, loop=True, cutoff_lower=0.4)
    ref = pos.clone()
    expected_rebuilds = 0
    for step in range(30):
        if step:
            pos = pos + torch.tensor(rng.normal(scale=0.06, size=pos.shape))
        moved = float((pos - ref).norm(dim=1).max())
        if step == 0 or moved > skin / 2:
            expected_rebuilds += 1
            ref = pos.clone()
        got = vl.update(pos, box=box)
        fresh = radius_graph_full(pos, cutoff, box=box, loop=True, cutoff_lower=0.4)
        for name in ("edge_index", "edge_vec", "edge_dist", "shifts", "row_ptr"):
            assert torch.equal(getattr(got, name), getattr(fresh, name)), (step, name)
        assert vl.rebuilds == expected_rebuilds
    assert 1 < vl.rebuilds < 30  # it reused the candidates and it did rebuild
    if periodic:  # a changed box forces a rebuild
        before = vl.rebuilds
        vl.update(pos, box=box * 1.01)
        assert vl.rebuilds == before + 1


def test_verlet_list_gradients_and_reference_backend():
    rng = np.random.default_rng(9)
    pos = torch.tensor(rng.uniform(0, 5, (20, 3)), requires_grad=True)
    vl = VerletList(2.5, 0.5, loop=True)
    vl_ref = VerletList(2.5, 0.5, loop=True, backend="reference")
    a, b = vl.update(pos), vl_ref.update(pos)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.shifts, b.shifts)
    torch.testing.assert_close(a.edge_dist, b.edge_dist)
    (ga,) = torch.autograd.grad(a.edge_dist.sum(), pos)
    (gb,) = torch.autograd.grad(b.edge_dist.sum(), pos)
    torch.testing.assert_close(ga, gb)


def test_bad_inputs_raise_input_error():
    pos = torch.rand(5, 3, dtype=torch.float64)
    bad_pos = pos.clone()
    bad_pos[2, 1] = float("nan")
    inf_pos = pos.clone()
    inf_pos[0, 0] = float("inf")
    flat = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    cases = [
        lambda: radius_graph_full(bad_pos, 2.0),
        lambda: radius_graph_full(inf_pos, 2.0),
        lambda: radius_graph_full(pos, 0.0),
        lambda: radius_graph_full(pos, -1.0),
        lambda: radius_graph_full(pos, float("nan")),
        lambda: radius_graph_full(pos, 2.0, cutoff_lower=2.0),
        lambda: radius_graph_full(pos, 2.0, box=torch.zeros(3, 3, dtype=torch.float64)),
        lambda: radius_graph_full(pos, 2.0, box=flat),  # coplanar rows
        lambda: radius_graph_full(pos, 2.0, box=torch.eye(3, dtype=torch.float64).expand(2, 3, 3)),
        lambda: radius_graph_full(pos, 2.0, box=torch.eye(3)),  # dtype mismatch
        lambda: radius_graph_full(pos, 2.0, batch=torch.zeros(4, dtype=torch.long)),
        lambda: radius_graph_full(pos, 2.0, batch=torch.tensor([0, 1, 0, 1, 1])),
        lambda: radius_graph_full(pos, 2.0, batch=torch.tensor([-1, 0, 0, 0, 0])),
        lambda: radius_graph_full(pos[:, :2], 2.0),
        lambda: radius_graph_full(pos.long(), 2.0),
        lambda: radius_graph_full(pos, 2.0, backend="gpu-magic"),
        lambda: VerletList(2.0, -0.1),
        lambda: VerletList(2.0, 0.5).update(bad_pos),
    ]
    for k, case in enumerate(cases):
        with pytest.raises(InputError):
            case()
        assert issubclass(InputError, ValueError), k


FALLBACK_SCRIPT = """
import warnings, torch, tensornet_fast as tnf
from tensornet_fast.errors import InputError
from tensornet_fast.neighbors import radius_graph_reference
gen = torch.Generator().manual_seed(0)
box = torch.tensor([[6.0, 0, 0], [1.0, 5.5, 0], [-0.5, 0.7, 5.0]], dtype=torch.float64)
pos = torch.rand(40, 3, generator=gen, dtype=torch.float64) @ box
assert not tnf.neighbors.compiled_available()
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    a = tnf.radius_graph_full(pos, 4.0, box=box)
assert any("reference radius graph" in str(w.message) for w in seen), seen
b = radius_graph_reference(pos, 4.0, box=box)
assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.shifts, b.shifts)
try:
    tnf.radius_graph_full(pos, 4.0, box=box, backend="compiled")
    raise SystemExit("no error for backend='compiled' without the extension")
except InputError:
    pass
print("ok")
"""


def test_fallback_without_extension():
    """Without the extension (TENSORNET_FAST_DISABLE_EXTENSION=1, read once per process, so in
    a subprocess) the search falls back to the brute force with one warning, same edges."""
    env = dict(os.environ, TENSORNET_FAST_DISABLE_EXTENSION="1")
    out = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


CSRC = os.path.join(ROOT, "csrc")
CU_FILES = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))


def test_cuda_sources_exist():
    assert CU_FILES, "csrc/ must hold the CUDA radius graph"


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: os.path.relpath(p, CSRC))
def test_cuda_sources_compile(path, tmp_path):
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA sources cannot be compile-checked here")
    out = subprocess.run(
        [
            nvcc,
            "-c",
            "-O1",
            "-std=c++17",
            "-arch=sm_80",
            "--fmad=false",
            path,
            "-o",
            str(tmp_path / "k.o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]


def test_water_density_edges_per_atom():
    """Sanity of the benchmark system: ~0.1 atoms / A^3 gives ~52 neighbours within 5 A."""
    pos, box = water_box(300)
    nl = radius_graph_full(torch.tensor(pos), 5.0, box=torch.tensor(box))
    per_atom = nl.num_edges / len(pos)
    assert abs(per_atom - 4 / 3 * math.pi * 125 * 0.1002) < 6, per_atom


# ------------------------------------------------------------------------ scalar candidate loop
@pytest.mark.parametrize("kind", ["ortho", "triclinic", "tiny_multi_image", "open"])
def test_scalar_candidate_loop_matches_brute_force(kind, monkeypatch):
    """TNF_RADIUS_GRAPH_SIMD=0 selects the portable loop (machines without AVX2)."""
    monkeypatch.setenv("TNF_RADIUS_GRAPH_SIMD", "0")
    pos, cutoff, box = system(kind, torch.float64, seed=13)
    assert_matches_brute(pos, cutoff, box=box, loop=True, cutoff_lower=0.7)


# ------------------------------------------------------------------------ static capacity
def brute_edges(pos, cutoff, batch=None, box=None, loop=False, cutoff_lower=0.0):
    box64 = None if box is None else box.double().numpy()
    b = None if batch is None else batch.numpy()
    return brute_force(pos.double().numpy(), cutoff, b, box64, loop, cutoff_lower)[0]


def assert_static_matches(snl, pos, cutoff, batch=None, box=None, loop=False, cutoff_lower=0.0):
    """Valid part = brute force and = radius_graph_full (bitwise); the rest is padding."""
    rows = brute_edges(pos, cutoff, batch, box, loop, cutoff_lower)
    e = snl.check()
    assert e == len(rows)
    assert int(snl.num_edges) == e and int(snl.row_ptr[-1]) == e
    nl = snl.to_neighbor_list()
    check_structure(nl, pos.shape[0])
    assert np.array_equal(as_rows(nl), rows)
    full = radius_graph_full(pos, cutoff, batch, box, loop, cutoff_lower)
    for name in ("edge_index", "edge_vec", "edge_dist", "shifts", "row_ptr"):
        assert torch.equal(getattr(nl, name), getattr(full, name)), name
    assert bool((snl.edge_index[:, e:] == -1).all())
    for t in (snl.edge_vec, snl.edge_dist, snl.shifts):
        assert bool((t[e:] == 0).all())
    assert bool(snl.valid[:e].all()) and not bool(snl.valid[e:].any())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_static_equals_dynamic_and_brute_force(kind, dtype):
    pos, cutoff, box = system(kind, dtype, seed=21)
    for loop, lower in ((False, 0.0), (True, 0.9)):
        e = len(brute_edges(pos, cutoff, None, box, loop, lower))
        snl = radius_graph_static(pos, cutoff, e + 37, box=box, loop=loop, cutoff_lower=lower)
        assert snl.edge_index.shape == (2, e + 37) and snl.capacity == e + 37
        assert_static_matches(snl, pos, cutoff, None, box, loop, lower)
        exact = radius_graph_static(pos, cutoff, e, box=box, loop=loop, cutoff_lower=lower)
        assert exact.check() == e  # a capacity of exactly E is enough


@pytest.mark.parametrize("periodic", [True, False])
def test_static_batches(periodic):
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 12, 9)
    batch = torch.tensor(np.repeat(np.arange(9), sizes))
    cells = np.stack([random_cell(rng, skew=0.3, scale=rng.uniform(2.5, 6.0)) for _ in range(9)])
    pos = np.concatenate([rng.uniform(-0.5, 1.5, (s, 3)) @ cells[m] for m, s in enumerate(sizes)])
    pos, box = torch.tensor(pos), torch.tensor(cells) if periodic else None
    e = len(brute_edges(pos, 3.2, batch, box, True))
    snl = radius_graph_static(pos, 3.2, e + 5, batch=batch, box=box, loop=True)
    assert_static_matches(snl, pos, 3.2, batch, box, True)


@pytest.mark.parametrize("periodic", [True, False])
def test_static_overflow_raises_with_the_needed_capacity(periodic):
    pos, cutoff, box = system("triclinic" if periodic else "open", seed=8)
    needed = len(brute_edges(pos, cutoff, None, box))
    with pytest.raises(NeighborListOverflowError, match=f"at least {needed}") as info:
        radius_graph_static(pos, cutoff, needed - 1, box=box)
    assert info.value.required == needed and info.value.capacity == needed - 1
    assert isinstance(info.value, RuntimeError)
    # check=False: nothing raised yet, the flag stays on the device, the buffers hold an empty
    # graph (no index out of range), and the later host-side check raises.
    snl = radius_graph_static(pos, cutoff, needed // 2, box=box, check=False)
    assert int(snl.status[0]) == needed
    assert bool((snl.row_ptr == 0).all()) and bool((snl.edge_index == -1).all())
    assert bool((snl.edge_dist == 0).all())
    with pytest.raises(NeighborListOverflowError, match=str(needed)):
        snl.check()
    # Raising the capacity to the number in the message works.
    assert radius_graph_static(pos, cutoff, needed, box=box).check() == needed


@pytest.mark.parametrize("periodic", [True, False])
def test_static_graph_reuses_its_buffers_while_atoms_move(periodic):
    """MD-like use: one plan, many frames, the same buffers; atoms of the open system drift
    out of the planned bounding box (clamped into the border bins, still exact)."""
    rng = np.random.default_rng(17)
    cell = random_cell(rng, skew=0.3, scale=7.0)
    pos = torch.tensor(rng.uniform(0, 1, (70, 3)) @ cell)
    box = torch.tensor(cell) if periodic else None
    cutoff = 3.0
    capacity = 2 * len(brute_edges(pos, cutoff, None, box, True))
    graph = StaticRadiusGraph(cutoff, capacity, pos, box=box, loop=True)
    ptrs = None
    for step in range(8):
        if step:
            pos = pos + torch.tensor(rng.normal(scale=0.4, size=pos.shape))
            pos = pos * 1.03 if not periodic else pos  # expand beyond the planned bounds
        snl = graph(pos)
        assert_static_matches(snl, pos, cutoff, None, box, True)
        now = [t.data_ptr() for t in (snl.edge_index, snl.edge_vec, snl.shifts, snl.row_ptr)]
        assert ptrs is None or now == ptrs
        ptrs = now


def test_static_out_of_plan_position_is_flagged():
    pos, cutoff, box = system("ortho", seed=2)
    graph = StaticRadiusGraph(cutoff, 10_000, pos, box=box, max_abs=100.0)
    graph(pos)
    far = pos.clone()
    far[3] += 500.0
    snl = graph(far, check=False)
    assert int(snl.status[1]) == 1 and bool((snl.edge_index == -1).all())
    with pytest.raises(NeighborListOverflowError, match="planned"):
        snl.check()
    with pytest.raises(InputError):
        graph(pos[:5])  # not the planned shape
    with pytest.raises(InputError):
        StaticRadiusGraph(cutoff, -1, pos, box=box)


@pytest.mark.parametrize("periodic", [False, True])
def test_static_gradients_match_dynamic(periodic):
    rng = np.random.default_rng(3)
    cell = torch.tensor(random_cell(rng, skew=0.3, scale=3.0))
    pos = torch.tensor(rng.uniform(0, 3, (8, 3)), requires_grad=True)
    box = cell if periodic else None

    def energy(nl):
        w = torch.sin(nl.edge_vec).sum(1) * torch.exp(-nl.edge_dist)
        return w.sum()  # padding slots: vec = 0, dist = 0 -> constant terms, no gradient

    graph = StaticRadiusGraph(2.6, 4000, pos, box=box, loop=True)
    (g_static,) = torch.autograd.grad(energy(graph(pos)), pos)
    (g_full,) = torch.autograd.grad(energy(radius_graph_full(pos, 2.6, box=box, loop=True)), pos)
    torch.testing.assert_close(g_static, g_full, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda p: energy(graph(p)), (pos,))


def test_static_empty_system():
    pos = torch.zeros(0, 3, dtype=torch.float64)
    snl = radius_graph_static(pos, 3.0, 4, loop=True)
    assert snl.check() == 0 and snl.row_ptr.tolist() == [0]
    assert bool((snl.edge_index == -1).all())


def test_large_outputs_from_the_block_cache(tmp_path):
    """Outputs above 4 MB come from the extension's block cache (reused across calls): the
    same edges as vesin on every call, ordinary tensors for torch.save and autograd. 9000
    atoms: above the size where the search runs on all OpenMP threads."""
    vesin = pytest.importorskip("vesin")
    pos, box = water_box(3000)
    vi, vj, vS, _ = vesin.NeighborList(cutoff=5.0, full_list=True).compute(pos, box, True, "ijSd")
    vref = np.column_stack((vi, vj, -vS)).astype(np.int64)
    vref = vref[np.lexsort(vref.T[::-1])]
    p, b = torch.tensor(pos, requires_grad=True), torch.tensor(box)
    first = None
    for _ in range(3):  # the second and third calls reuse the blocks freed by the previous one
        nl = radius_graph_full(p, 5.0, box=b)
        assert nl.edge_vec.numel() * 8 > 4 << 20  # large enough for the cache
        assert np.array_equal(as_rows(nl), vref)
        if first is None:
            first = [t.detach().clone() for t in (nl.edge_index, nl.edge_vec, nl.edge_dist)]
        else:
            for x, y in zip(first, (nl.edge_index, nl.edge_vec, nl.edge_dist)):
                assert torch.equal(x, y.detach())
        del nl
    nl = radius_graph_full(p, 5.0, box=b)
    # The static search (threaded too) gives the same edges.
    snl = radius_graph_static(p.detach(), 5.0, nl.num_edges + 100, box=b)
    assert snl.check() == nl.num_edges
    assert torch.equal(snl.to_neighbor_list().edge_index, nl.edge_index)
    assert torch.equal(snl.to_neighbor_list().edge_vec, nl.edge_vec.detach())
    torch.save(nl, tmp_path / "nl.pt")
    back = torch.load(tmp_path / "nl.pt", weights_only=False)
    assert torch.equal(back.edge_index, nl.edge_index)
    (g,) = torch.autograd.grad(nl.edge_dist.sum(), p)
    assert bool(torch.isfinite(g).all())
