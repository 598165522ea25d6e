"""Benchmark systems, built deterministically from a seed (no downloads, no data files).

Every builder returns a :class:`System`: numpy arrays ``z`` [N], ``pos`` [N, 3] (Å), ``batch`` [N]
(sorted molecule index), ``box`` ([3, 3] rows or None) and a name. Sizes are targets; the real
atom count is in ``System.atoms`` (and in the CSV).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

WATER_DENSITY = 0.0334  # molecules / Å^3 (liquid water at 300 K)
O_H = 0.9572  # TIP3P geometry
HOH = math.radians(104.52)


@dataclasses.dataclass
class System:
    name: str
    z: np.ndarray
    pos: np.ndarray
    batch: np.ndarray
    box: np.ndarray | None = None

    @property
    def atoms(self) -> int:
        return int(self.z.shape[0])

    @property
    def molecules(self) -> int:
        return int(self.batch.max()) + 1 if self.atoms else 0


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )


def water_box(target_atoms: int, seed: int = 0) -> System:
    """Periodic cubic box of m^3 waters (m = round((target/3)^(1/3))) at 0.0334 molecules/Å^3:
    one water per site of a simple cubic grid (spacing 3.10 Å), random orientations, 0.2 Å
    jitter."""
    rng = np.random.default_rng(seed)
    m = max(2, round((target_atoms / 3) ** (1 / 3)))
    n = m**3
    side = (n / WATER_DENSITY) ** (1 / 3)
    spacing = side / m
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (grid + 0.5) * spacing + rng.uniform(-0.2, 0.2, size=(n, 3))
    local = np.array(
        [
            [0.0, 0.0, 0.0],
            [O_H * math.sin(HOH / 2), O_H * math.cos(HOH / 2), 0.0],
            [-O_H * math.sin(HOH / 2), O_H * math.cos(HOH / 2), 0.0],
        ]
    )
    rot = _random_rotations(rng, n)
    pos = centres[:, None, :] + np.einsum("nab,kb->nka", rot, local)
    z = np.tile(np.array([8, 1, 1]), n)
    return System(
        f"water_box_{3 * n}",
        z,
        pos.reshape(-1, 3),
        np.zeros(3 * n, dtype=np.int64),
        np.eye(3) * side,
    )


def _concat(name: str, mols: list[tuple[np.ndarray, np.ndarray]]) -> System:
    z = np.concatenate([m[0] for m in mols])
    pos = np.concatenate([m[1] for m in mols])
    batch = np.concatenate([np.full(len(m[0]), k, dtype=np.int64) for k, m in enumerate(mols)])
    return System(name, z.astype(np.int64), pos, batch)


def g2_batch(count: int | None = None) -> System:
    """ASE's g2 set (162 small molecules, 1-14 atoms) as one batch; ``count``: the first ones."""
    from ase.collections import g2

    names = list(g2.names)[: count or None]
    mols = [(g2[n].numbers.copy(), g2[n].positions.copy()) for n in names]
    return _concat(f"g2_batch_{len(mols)}", mols)


def random_molecule(n_atoms: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A connected, molecule-like cluster: each new atom bonds (1.0-1.5 Å) to a random earlier
    heavy atom and keeps >= 1.0 Å from all others. Elements H/C/N/O at 50/33/8/9 %."""
    z = rng.choice([1, 6, 7, 8], size=n_atoms, p=[0.5, 0.33, 0.08, 0.09])
    z[0] = 6
    pos = np.zeros((n_atoms, 3))
    for k in range(1, n_atoms):
        heavy = [a for a in range(k) if z[a] != 1] or [0]
        for _ in range(1000):
            v = rng.normal(size=3)
            cand = pos[rng.choice(heavy)] + v / np.linalg.norm(v) * rng.uniform(1.0, 1.5)
            if np.min(np.linalg.norm(pos[:k] - cand, axis=1)) >= 1.0:
                break
        pos[k] = cand
    return z, pos


def random_molecules(count: int, seed: int = 0, low: int = 10, high: int = 50) -> System:
    """``count`` random molecules of low..high atoms (uniform), one batch."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(low, high + 1, size=count)
    mols = [random_molecule(int(s), rng) for s in sizes]
    return _concat(f"random_mols_{count}x{low}-{high}", mols)


def single_molecule() -> System:
    """Biphenyl (C12H10, 22 atoms, ASE's molecule database): the single-molecule latency case."""
    from ase.build import molecule

    m = molecule("biphenyl")
    return _concat("biphenyl_22", [(m.numbers.copy(), m.positions.copy())])


def protein_like(target_atoms: int = 1231, seed: int = 0) -> System:
    """A protein-sized, non-periodic dense organic globule (no PDB ships with the installed
    packages): atoms on a jittered grid inside a sphere at 0.11 atoms/Å^3 (protein density with
    hydrogens), composition H 50 %, C 31 %, N 8.5 %, O 10 %, S 0.5 %. Default size = ubiquitin
    with hydrogens (1231 atoms). Same neighbour density as a protein, no chemistry."""
    rng = np.random.default_rng(seed)
    density = 0.11
    radius = (3 * target_atoms / (4 * math.pi * density)) ** (1 / 3)
    spacing = density ** (-1 / 3)
    m = int(math.ceil(2 * radius / spacing)) + 2
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5
    grid = grid * spacing - m * spacing / 2
    grid = grid[np.argsort(np.linalg.norm(grid, axis=1), kind="stable")][:target_atoms]
    pos = grid + rng.uniform(-0.25, 0.25, size=grid.shape)
    z = rng.choice([1, 6, 7, 8, 16], size=target_atoms, p=[0.5, 0.31, 0.085, 0.1, 0.005])
    return _concat(f"protein_like_{target_atoms}", [(z, pos)])


def build(scenario: str, size: int, seed: int = 0) -> System:
    """Scenario name + size -> System. Sizes: water/protein = atoms, g2/random = molecules."""
    if scenario == "water":
        return water_box(size, seed)
    if scenario == "g2":
        return g2_batch(size)
    if scenario == "random_mols":
        return random_molecules(size, seed)
    if scenario == "single":
        return single_molecule()
    if scenario == "protein":
        return protein_like(size, seed)
    raise ValueError(f"unknown scenario {scenario!r} (water, g2, random_mols, single, protein)")


SCENARIOS = ("water", "g2", "random_mols", "single", "protein")
