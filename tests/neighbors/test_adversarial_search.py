"""Issue #22, neighbour side: NaN is flagged like inf, and every search (compiled, brute force,
static plan, Verlet list, dense_edges of export) refuses inputs over its size budgets with an
InputError naming the number and the limit, before allocating."""

from __future__ import annotations

import pytest
import torch

import tensornet_fast as tnf
from tensornet_fast import InputError, NeighborListOverflowError
from tensornet_fast.neighbors import compiled_available

needs_ext = pytest.mark.skipif(not compiled_available(), reason="compiled extension not built")

POS = torch.tensor([[0.0, 0, 0], [1.2, 0, 0], [0, 1.1, 0], [0.3, 0.4, 1.0]], dtype=torch.float64)
BOX = torch.eye(3, dtype=torch.float64) * 7.0


# --------------------------------------------------------------- 5. NaN flagged like inf
@needs_ext
@pytest.mark.parametrize("box", [None, BOX], ids=["open", "periodic"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_static_graph_flags_nan_like_inf(box, bad, dtype):
    pos = POS.to(dtype)
    graph = tnf.StaticRadiusGraph(3.0, 64, pos, box=None if box is None else box.to(dtype))
    good = graph(pos)
    assert good.check() == tnf.radius_graph_full(pos, 3.0, box=graph.boxes).num_edges
    moved = pos.clone()
    moved[1, 2] = bad
    nl = graph(moved, check=False)
    assert int(nl.status[1]) == 1 and int(nl.row_ptr[-1]) == 0  # empty graph, flagged
    with pytest.raises(NeighborListOverflowError, match="NaN or inf"):
        nl.check()


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_radius_graph_flags_nan(backend):
    if backend == "compiled" and not compiled_available():
        pytest.skip("compiled extension not built")
    pos = POS.clone()
    pos[2, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN or inf \(atoms \[2\]\)"):
        tnf.radius_graph(pos, 3.0, backend=backend)


@needs_ext
def test_verlet_list_and_skin_rule_see_nan():
    from tensornet_fast.neighbors import SkinRule

    rule = SkinRule(0.5)
    rule.mark(POS)
    moved = POS.clone()
    moved[0, 0] = float("nan")
    assert rule.moved_too_far(moved)  # NaN counts as moved: the rebuild reports it
    vl = tnf.VerletList(3.0, 0.5)
    vl.update(POS)
    with pytest.raises(InputError, match="NaN or inf"):
        vl.update(moved)


@needs_ext
def test_md_step_with_a_nan_position_raises():
    from tensornet_fast.md import MDStep

    model = tnf.load_model("default", backend="reference", precision=64)
    z = torch.tensor([6, 8, 1, 1])
    step = MDStep(model, z, POS)
    step(POS)
    moved = POS.clone()
    moved[3, 1] = float("nan")
    with pytest.raises((InputError, NeighborListOverflowError), match="NaN"):
        step(moved)


# --------------------------------------------------------------- 7. budgets, every search
SEARCHES = {
    "compiled": lambda pos, cut, batch, box: tnf.radius_graph(
        pos, cut, batch, box, backend="compiled"
    ),
    "reference": lambda pos, cut, batch, box: tnf.radius_graph(
        pos, cut, batch, box, backend="reference"
    ),
    "static": lambda pos, cut, batch, box: tnf.StaticRadiusGraph(cut, 16, pos, batch, box),
    "verlet": lambda pos, cut, batch, box: tnf.VerletList(cut, 0.5).update(pos, batch, box),
}


def _search(name):
    if name != "reference" and not compiled_available():
        pytest.skip("compiled extension not built")
    return SEARCHES[name]


@pytest.mark.parametrize("name", list(SEARCHES))
def test_tiny_cell(name):
    search = _search(name)
    with pytest.raises(InputError, match=r"would visit .* periodic images.*budget"):
        search(torch.zeros(1, 3, dtype=torch.float64), 5.0, None, BOX / 700)


@pytest.mark.parametrize("name", list(SEARCHES))
def test_dense_periodic_cell_over_the_edge_budget(name, monkeypatch):
    search = _search(name)
    monkeypatch.setenv("TENSORNET_FAST_MAX_EDGES", "1000")
    pos = torch.rand(40, 3, dtype=torch.float64) * 2
    with pytest.raises(InputError, match=r"about .* pairs .*budget of 1e\+03 edges"):
        search(pos, 5.0, None, torch.eye(3, dtype=torch.float64) * 2)


@pytest.mark.parametrize("name", ["compiled", "reference", "verlet"])
def test_dense_open_cluster_over_the_edge_budget(name, monkeypatch):
    search = _search(name)
    monkeypatch.setenv("TENSORNET_FAST_MAX_EDGES", "5000")
    pos = torch.rand(300, 3, dtype=torch.float64) * 3
    with pytest.raises(InputError, match="more than .*edges.*TENSORNET_FAST_MAX_EDGES"):
        search(pos, 5.0, None, None)


@needs_ext
def test_static_capacity_over_the_edge_budget(monkeypatch):
    monkeypatch.setenv("TENSORNET_FAST_MAX_EDGES", "1000")
    with pytest.raises(InputError, match="capacity 5000 is more than the edge budget"):
        tnf.StaticRadiusGraph(3.0, 5000, POS)


@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize("x", [1e17, 1e200])
def test_far_coordinates(name, x):
    search = _search(name)
    pos = POS.clone()
    pos[0, 0] = x
    with pytest.raises(InputError, match="beyond the limit"):
        search(pos, 3.0, None, BOX)


@pytest.mark.parametrize("name", list(SEARCHES))
def test_many_cells_away(name):
    search = _search(name)
    with pytest.raises(InputError, match="cells away"):
        search(POS + 1e8, 3.0, None, BOX)


@pytest.mark.parametrize("name", list(SEARCHES))
def test_molecule_index_gap(name):
    search = _search(name)
    batch = torch.tensor([0, 0, 1, 10**9])
    with pytest.raises(InputError, match="molecule indices hold no atom"):
        search(POS, 3.0, batch, None)


@pytest.mark.parametrize("name", ["compiled", "reference"])
def test_skewed_cell_matches_brute_force(name):
    """A skewed but valid cell (rows 7, 70.4, 7 A) is searched exactly: the same edges as the
    brute force (which does its own image count)."""
    search = _search(name)
    skewed = torch.tensor([[7.0, 0, 0], [70.0, 7, 0], [0, 0, 7]], dtype=torch.float64)
    got = tnf.radius_graph_full(POS, 3.0, None, skewed, backend=name)
    ref = tnf.neighbors.radius_graph_reference(POS, 3.0, None, skewed)
    assert torch.equal(got.edge_index, ref.edge_index)
    torch.testing.assert_close(got.edge_dist, ref.edge_dist, rtol=1e-12, atol=1e-12)
    assert search is not None


def test_dense_edges_budget(monkeypatch):
    from tensornet_fast.md.traceable import dense_edges, dense_max_atoms

    monkeypatch.setenv("TENSORNET_FAST_DENSE_MAX_GB", "0.0001")  # ~107 kB
    limit = dense_max_atoms(torch.float64, True, 1)
    assert 10 < limit < 100
    pos = torch.rand(limit + 1, 3, dtype=torch.float64)
    with pytest.raises(InputError, match=r"dense_edges on .* atoms .*budget"):
        dense_edges(pos, 3.0, BOX, 1)
    dense_edges(pos[:limit], 3.0, BOX, 1)  # within the budget
