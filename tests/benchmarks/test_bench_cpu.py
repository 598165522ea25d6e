"""pytest-benchmark timings of the CPU pieces. In the default suite they run once each with
``--benchmark-disable`` (the assertions still run); to time them:
``pytest tests/test_bench_cpu.py --benchmark-enable``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bench import systems
from tensornet_fast import load_model, radius_graph

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def water():
    s = systems.water_box(81)  # 27 waters, periodic 9.3 Å box
    return (
        torch.as_tensor(s.z),
        torch.as_tensor(s.pos, dtype=torch.float32),
        torch.as_tensor(s.box, dtype=torch.float32),
    )


def test_reference_energy_forces_water_box(benchmark, water):
    z, pos, box = water
    model = load_model("default", backend="reference")  # bundled model: F=48, 2 layers, r_c=5
    rng = itertools.count()

    def step():  # rotate inputs: a different displacement every round
        k = next(rng)
        gen = torch.Generator().manual_seed(k)
        return model(z, pos + 0.01 * torch.randn(pos.shape, generator=gen), box=box)

    energy, forces = benchmark(step)
    assert energy.shape == (1, 1) and torch.isfinite(energy).all()
    assert forces.shape == pos.shape and torch.isfinite(forces).all()
    # periodic system: the forces sum to zero (translation invariance)
    assert forces.sum(0).abs().max() < 1e-3 * forces.abs().max() + 1e-5


def test_reference_radius_graph_water_box(benchmark):
    s = systems.water_box(192)  # 64 waters, 12.4 Å box: minimum image is exact at r_c = 5
    pos = torch.as_tensor(s.pos, dtype=torch.float64)
    box = torch.as_tensor(s.box, dtype=torch.float64)
    edge_index, edge_vec, edge_dist = benchmark(radius_graph, pos, 5.0, box=box)
    # brute-force minimum-image count with numpy
    d = s.pos[:, None, :] - s.pos[None, :, :]
    side = np.diag(s.box)
    d -= np.round(d / side) * side
    r = np.linalg.norm(d, axis=-1)
    expected = int(((r < 5.0) & (r > 0)).sum())
    assert edge_index.shape[1] == expected
    assert torch.all(edge_dist < 5.0)
    assert torch.allclose(edge_vec.norm(dim=1), edge_dist)
