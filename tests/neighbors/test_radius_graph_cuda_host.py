"""The CUDA radius graph's code, run on the CPU: its kernels (csrc/radius_graph/cuda.cu) compiled
for the host with every (block, thread) of a launch run in turn (cuda_on_host.h), driven by the
same glue as on a GPU (glue.h), exposed as torch.ops.tensornet_fast.*_cuda_emulated.

No GPU has to run for these: each emulated op must give exactly (bitwise, every output tensor)
what the CPU search gives, and the pair sets, shifts and order of the brute-force reference
(radius_graph_reference on the float64 positions, which is what both searches test). Systems
below 1024 atoms take the CUDA glue's single-bin brute force, larger ones its cell list.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_radius_graph import KINDS, random_cell, system

from tensornet_fast import _extension
from tensornet_fast.neighbors import radius_graph_reference

OPS = _extension.ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="tensornet_fast._C is not built")
NAMES = ("edge_index", "shifts", "vec", "dist", "row_ptr")
BRUTE_FORCE_ATOMS = 1024  # csrc/radius_graph/glue.h kBruteForceAtoms


def _boxes(box, n_mol):
    if box is None:
        return None
    box = box.double()
    return (box if box.dim() == 3 else box.expand(n_mol, 3, 3)).contiguous()


def _n_mol(batch):
    return int(batch[-1]) + 1 if len(batch) else 0


def assert_same_graph(pos, cutoff, batch=None, box=None, loop=False, lower=0.0, reference=True):
    """radius_graph_cuda_emulated == radius_graph (CPU) bitwise, and (reference) the pairs of
    the brute force in its order. Returns the number of edges."""
    batch = torch.zeros(len(pos), dtype=torch.long) if batch is None else batch
    args = (pos.contiguous(), batch, _boxes(box, _n_mol(batch)), cutoff, lower, loop)
    cpu = OPS.radius_graph(*args)
    emu = OPS.radius_graph_cuda_emulated(*args)
    for name, a, b in zip(NAMES, cpu, emu):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
    ei, shifts, vec, dist, row_ptr = emu
    if not reference:  # the CPU search is checked against brute forces in test_radius_graph.py
        return ei.shape[1]
    ref = radius_graph_reference(pos.double(), cutoff, batch, args[2], loop, lower)
    assert torch.equal(ei, ref.edge_index)
    assert torch.equal(shifts.double(), ref.shifts)
    assert torch.equal(row_ptr, ref.row_ptr)
    tol = 1e-12 if pos.dtype == torch.float64 else 1e-6
    scale = 1.0 + float(pos.double().abs().max()) if len(pos) else 1.0
    torch.testing.assert_close(vec.double(), ref.edge_vec, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(dist.double(), ref.edge_dist, rtol=tol, atol=tol * scale)
    return ei.shape[1]


def uniform_system(n, side, periodic, seed=0, skew=0.0):
    """n atoms uniformly in a (possibly skewed) cell of about side^3."""
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, skew=skew, scale=side)
    pos = torch.tensor(rng.uniform(0, 1, (n, 3)) @ cell)
    return pos, torch.tensor(cell) if periodic else None


# ------------------------------------------------------------------------- dynamic search
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_systems_match_cpu_and_brute_force(kind, dtype):
    pos, cutoff, box = system(kind, dtype, seed=31)
    for loop, lower in ((False, 0.0), (True, 0.0), (False, 0.9), (True, 1.3)):
        assert_same_graph(pos, cutoff, box=box, loop=loop, lower=lower)


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("skew", [0.0, 0.4])
def test_cell_list_path_matches_cpu(periodic, skew):
    """Above 1024 atoms the CUDA glue bins (count, scan, fill + row sort, finalize)."""
    pos, box = uniform_system(1100, 22.0, periodic, seed=7, skew=skew)
    assert pos.shape[0] > BRUTE_FORCE_ATOMS
    # the O(N^2 images) PyTorch reference once (~10 s periodic), the CPU search for the rest
    assert assert_same_graph(pos, 4.0, box=box, loop=True, lower=0.8) > 0
    assert_same_graph(pos, 4.0, box=box, reference=False)
    assert_same_graph(pos.float(), 4.0, box=box, loop=True, reference=False)


def test_cell_list_with_atoms_outside_the_cell():
    rng = np.random.default_rng(11)
    cell = random_cell(rng, skew=0.3, scale=14.0)
    pos = torch.tensor((rng.uniform(0, 1, (1100, 3)) * 5 - 2) @ cell)  # up to 2 cells away
    assert_same_graph(pos, 3.5, box=torch.tensor(cell), loop=True)


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("n_mol", [9, 200])
def test_batches_with_per_molecule_cells(periodic, n_mol):
    """Per-molecule grids and cells, incl. cells smaller than the cutoff (several images of the
    same atom); 200 molecules (> 1024 atoms) take the cell-list path."""
    rng = np.random.default_rng(n_mol)
    sizes = rng.integers(1, 12, n_mol)
    batch = torch.tensor(np.repeat(np.arange(n_mol), sizes))
    cells = np.stack(
        [random_cell(rng, skew=0.3, scale=rng.uniform(2.2, 6.0)) for _ in range(n_mol)]
    )
    pos = np.concatenate([rng.uniform(-0.5, 1.5, (s, 3)) @ cells[m] for m, s in enumerate(sizes)])
    pos, box = torch.tensor(pos), torch.tensor(cells) if periodic else None
    assert (len(pos) > BRUTE_FORCE_ATOMS) == (n_mol == 200)
    assert_same_graph(pos, 4.2, batch=batch, box=box, loop=True)
    assert_same_graph(pos.float(), 3.1, batch=batch, box=box, loop=False, lower=0.7)


def test_batch_with_empty_molecule_ids():
    pos = torch.tensor(np.random.default_rng(0).uniform(0, 3, (10, 3)))
    batch = torch.tensor([0, 0, 0, 2, 2, 2, 2, 5, 5, 5])  # molecules 1, 3, 4 are empty
    assert_same_graph(pos, 2.0, batch=batch, loop=True)
    box = torch.eye(3, dtype=torch.float64).expand(6, 3, 3) * 3.0
    assert_same_graph(pos, 2.0, batch=batch, box=box, loop=True)


def test_atoms_exactly_at_the_cutoff_and_lower_cutoff():
    """Exact lattice: d = 2 is exactly the cutoff (excluded), d = 1 exactly cutoff_lower
    (included); the decision must come from the exact fp64 test, as on the CPU."""
    g = np.arange(4.0)
    pos = torch.tensor(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3))
    box = torch.eye(3, dtype=torch.float64) * 4.0
    for lower in (0.0, 1.0, 1.0 + 1e-12):
        e = assert_same_graph(pos, 2.0, box=box, lower=lower)
        assert e == len(pos) * (26 if lower <= 1.0 else 20)
    assert_same_graph(pos, 2.0, loop=True)
    assert_same_graph(pos.float(), 2.0, lower=1.0)


def test_coincident_atoms_empty_and_single_atom():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert_same_graph(pos, 1.5, loop=True)
    assert_same_graph(pos, 1.5, box=torch.eye(3) * 3.0, loop=True)
    for box in (None, torch.eye(3, dtype=torch.float64) * 5):
        assert assert_same_graph(torch.zeros(0, 3, dtype=torch.float64), 3.0, box=box) == 0
    one = torch.zeros(1, 3, dtype=torch.float64)
    assert assert_same_graph(one, 3.0, loop=True) == 1
    # its own periodic images are edges
    assert assert_same_graph(one, 3.0, box=torch.eye(3, dtype=torch.float64) * 2.0) > 0


# ------------------------------------------------------------------------- Verlet filter
@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_filter_pairs_matches_cpu_and_a_fresh_build(periodic, dtype):
    rng = np.random.default_rng(4)
    cell = random_cell(rng, skew=0.3, scale=7.0)
    pos = torch.tensor(rng.uniform(0, 1, (60, 3)) @ cell, dtype=dtype)
    batch = torch.zeros(60, dtype=torch.long)
    box = _boxes(torch.tensor(cell), 1) if periodic else None
    cutoff, skin, lower = 3.0, 0.6, 0.4
    cand = OPS.radius_graph(pos, batch, box, cutoff + skin, lower - skin, True)
    moved = (pos + torch.tensor(rng.normal(scale=0.08, size=pos.shape), dtype=dtype)).contiguous()
    args = (moved, batch, box, cand[0], cand[1], cutoff, lower, True)
    cpu = OPS.filter_pairs(*args)
    emu = OPS.filter_pairs_cuda_emulated(*args)
    fresh = OPS.radius_graph(moved, batch, box, cutoff, lower, True)
    for name, a, b, c in zip(NAMES, cpu, emu, fresh):
        assert torch.equal(a, b), name
        assert torch.equal(b, c), name
    empty = cand[0][:, :0], cand[1][:0]
    out = OPS.filter_pairs_cuda_emulated(moved, batch, box, *empty, cutoff, lower, True)
    assert out[0].shape == (2, 0) and out[4].tolist() == [0] * 61


# ------------------------------------------------------------------- static capacity
def _buffers(n, capacity, dtype):
    """Output buffers pre-filled with values neither kernel writes, so every slot is checked."""
    return (
        torch.full((2, capacity), 123, dtype=torch.long),
        torch.full((capacity, 3), float("nan"), dtype=dtype),
        torch.full((capacity, 3), float("nan"), dtype=dtype),
        torch.full((capacity,), float("nan"), dtype=dtype),
        torch.full((n + 1,), 77, dtype=torch.long),
        torch.full((2,), 99, dtype=torch.long),
    )


def static_both(pos, cutoff, capacity, batch=None, box=None, loop=False, lower=0.0, **kw):
    """(cpu buffers, emulated buffers) after radius_graph_static and its emulated version on
    the same plan; ``kw``: max_abs for the plan, pos_now for the positions searched."""
    batch = torch.zeros(len(pos), dtype=torch.long) if batch is None else batch
    box64 = _boxes(box, _n_mol(batch))
    max_abs = kw.get("max_abs", 4.0 * float(pos.double().abs().max() if len(pos) else 0) + 1e3)
    plan = OPS.radius_graph_plan(pos.double(), batch, box64, cutoff, lower, max_abs)
    now = kw.get("pos_now", pos).contiguous()
    out = []
    for op in (OPS.radius_graph_static, OPS.radius_graph_static_cuda_emulated):
        bufs = _buffers(len(pos), capacity, pos.dtype)
        op(now, batch, plan, plan.clone(), loop, *bufs)
        out.append(bufs)
    for name, a, b in zip(NAMES + ("status",), *out):
        for t in (a, b):
            assert not (t.is_floating_point() and t.isnan().any()), f"{name}: unwritten slots"
        assert torch.equal(a, b), name
    return out


@pytest.mark.parametrize("kind", ["open", "ortho", "triclinic", "tiny_multi_image"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_static_matches_cpu_and_dynamic(kind, dtype):
    pos, cutoff, box = system(kind, dtype, seed=21)
    for loop, lower in ((False, 0.0), (True, 0.9)):
        dyn = OPS.radius_graph_cuda_emulated(
            pos, torch.zeros(len(pos), dtype=torch.long), _boxes(box, 1), cutoff, lower, loop
        )
        e = dyn[0].shape[1]
        for capacity in (e + 37, e):
            _, (ei, shifts, vec, dist, row_ptr, status) = static_both(
                pos, cutoff, capacity, box=box, loop=loop, lower=lower
            )
            assert status.tolist() == [e, 0]
            assert torch.equal(row_ptr, dyn[4])
            assert torch.equal(ei[:, :e], dyn[0])
            for got, want in zip((shifts, vec, dist), dyn[1:4]):
                assert torch.equal(got[:e], want)
            assert bool((ei[:, e:] == -1).all()) and bool((dist[e:] == 0).all())


@pytest.mark.parametrize("periodic", [True, False])
def test_static_batches_and_cell_list_path(periodic):
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 12, 220)
    batch = torch.tensor(np.repeat(np.arange(220), sizes))
    cells = np.stack([random_cell(rng, skew=0.3, scale=rng.uniform(2.5, 6.0)) for _ in range(220)])
    pos = np.concatenate([rng.uniform(-0.5, 1.5, (s, 3)) @ cells[m] for m, s in enumerate(sizes)])
    pos, box = torch.tensor(pos), torch.tensor(cells) if periodic else None
    assert len(pos) > BRUTE_FORCE_ATOMS
    e = assert_same_graph(pos, 3.2, batch=batch, box=box, loop=True)
    _, emu = static_both(pos, 3.2, e + 5, batch=batch, box=box, loop=True)
    assert emu[5].tolist() == [e, 0]


@pytest.mark.parametrize("periodic", [True, False])
def test_static_overflow(periodic):
    """Too small a capacity: status[0] = the edges needed, row_ptr all 0, every slot padding."""
    pos, cutoff, box = system("triclinic" if periodic else "open", seed=8)
    e = assert_same_graph(pos, cutoff, box=box)
    for capacity in (e - 1, e // 2, 0):
        _, (ei, shifts, vec, dist, row_ptr, status) = static_both(pos, cutoff, capacity, box=box)
        assert status.tolist() == [e, 0]
        assert bool((row_ptr == 0).all()) and bool((ei == -1).all())
        assert bool((dist == 0).all()) and bool((vec == 0).all()) and bool((shifts == 0).all())


def test_static_positions_that_moved_out_of_the_plan_are_flagged():
    pos, cutoff, box = system("ortho", seed=2)
    far = pos.clone()
    far[3] += 500.0
    _, (ei, _, _, dist, row_ptr, status) = static_both(
        pos, cutoff, 10_000, box=box, max_abs=100.0, pos_now=far
    )
    assert status.tolist() == [0, 1]  # no edge count from positions the plan does not cover
    assert bool((row_ptr == 0).all()) and bool((ei == -1).all()) and bool((dist == 0).all())


def test_static_non_finite_positions_are_flagged():
    """A NaN or infinite coordinate is out of any plan (both kernels used to disagree: the CPU
    dropped a NaN atom silently, the CUDA path flagged it but reported an edge count)."""
    pos, cutoff, box = system("ortho", seed=2)
    for bad in (float("nan"), float("inf")):
        now = pos.clone()
        now[3, 1] = bad
        _, (ei, _, _, _, row_ptr, status) = static_both(pos, cutoff, 5000, box=box, pos_now=now)
        assert status.tolist() == [0, 1]
        assert bool((row_ptr == 0).all()) and bool((ei == -1).all())


def test_static_atoms_drifting_out_of_an_open_plan():
    """Open molecule: atoms leave the planned bounding box (clamped into the border bins)."""
    rng = np.random.default_rng(17)
    pos = torch.tensor(rng.uniform(0, 7, (70, 3)))
    moved = pos * 1.2 + torch.tensor(rng.normal(scale=0.4, size=pos.shape))
    e = assert_same_graph(moved, 3.0, loop=True)
    _, emu = static_both(pos, 3.0, 2 * e, loop=True, pos_now=moved)
    assert emu[5].tolist() == [e, 0]


def test_static_empty_system():
    pos = torch.zeros(0, 3, dtype=torch.float64)
    _, (ei, _, _, _, row_ptr, status) = static_both(pos, 3.0, 4, loop=True)
    assert status.tolist() == [0, 0] and row_ptr.tolist() == [0] and bool((ei == -1).all())
