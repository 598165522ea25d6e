"""Physics of the reference backend in float64: symmetries, forces = -dE/dx, energy conservation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracle import make_checkpoint
from systems import molecule_batch, water_box
from tolerances import assert_close

import tensornet_fast as tnf

F64 = torch.float64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("physics")
    out = {}
    for group in ("O(3)", "SO(3)"):
        path = make_checkpoint(
            root / f"{group}.ckpt",
            seed=11,
            precision=64,
            equivariance_invariance_group=group,
            cutoff_upper=4.0,
        )
        out[group] = tnf.load_model(path)
    return out


def _rotation(seed: int, reflect: bool = False) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    if reflect:
        q = q @ np.diag([1.0, 1.0, -1.0])
    return torch.as_tensor(q, dtype=F64)


def _chiral_batch():
    # 0.15 A random displacements make every molecule chiral, so a mirror image is a
    # genuinely different structure for an SO(3) model.
    return molecule_batch(jitter=0.15, seed=4)


@pytest.mark.parametrize("group", ["O(3)", "SO(3)"])
def test_rotation_invariance_and_force_equivariance(models, group):
    model = models[group]
    z, pos, batch = _chiral_batch()
    e, f = model(z, pos, batch)
    rot = _rotation(1)
    e_rot, f_rot = model(z, pos @ rot.T, batch)
    assert_close(e_rot, e, F64, "energy", "rotated")
    assert_close(f_rot, f @ rot.T, F64, "forces", "rotated")


def test_reflection_o3_invariant_so3_not(models):
    z, pos, batch = _chiral_batch()
    mirror = _rotation(2, reflect=True)
    e, f = models["O(3)"](z, pos, batch)
    e_m, f_m = models["O(3)"](z, pos @ mirror.T, batch)
    assert_close(e_m, e, F64, "energy", "mirrored O(3)")
    assert_close(f_m, f @ mirror.T, F64, "forces", "mirrored O(3)")
    e, _ = models["SO(3)"](z, pos, batch)
    e_m, _ = models["SO(3)"](z, pos @ mirror.T, batch)
    # SO(3) models tell enantiomers apart: the mirror image has a different energy.
    assert float((e_m - e).abs().max()) > 1e-6 * float(e.abs().max())


@pytest.mark.parametrize("group", ["O(3)", "SO(3)"])
def test_translation_invariance(models, group):
    z, pos, batch = _chiral_batch()
    e, f = models[group](z, pos, batch)
    e_t, f_t = models[group](z, pos + torch.tensor([3.7, -12.1, 100.3], dtype=F64), batch)
    assert_close(e_t, e, F64, "energy")
    assert_close(f_t, f, F64, "forces")


def test_permutation_of_atoms_and_molecules(models):
    model = models["O(3)"]
    z, pos, batch = _chiral_batch()
    e, f = model(z, pos, batch)
    n_mol = int(batch.max()) + 1
    # permute atoms within each molecule and the molecules' order in the batch
    gen = torch.Generator().manual_seed(0)
    mol_order = torch.randperm(n_mol, generator=gen)
    new_index = []
    for m in mol_order.tolist():
        atoms = torch.nonzero(batch == m).flatten()
        new_index.append(atoms[torch.randperm(len(atoms), generator=gen)])
    perm = torch.cat(new_index)
    new_batch = torch.argsort(mol_order)[batch[perm]]
    e_p, f_p = model(z[perm], pos[perm], new_batch)
    assert_close(e_p, e[mol_order], F64, "energy", "permuted")
    assert_close(f_p, f[perm], F64, "forces", "permuted")
    # an unsorted batch vector (atoms of molecules interleaved) is accepted too
    shuffle = torch.randperm(z.shape[0], generator=gen)
    e_s, f_s = model(z[shuffle], pos[shuffle], batch[shuffle])
    assert_close(e_s, e, F64, "energy", "shuffled")
    assert_close(f_s, f[shuffle], F64, "forces", "shuffled")


def test_batched_equals_separate(models):
    model = models["SO(3)"]
    z, pos, batch = _chiral_batch()
    e, f = model(z, pos, batch)
    for m in range(int(batch.max()) + 1):
        sel = batch == m
        e_m, f_m = model(z[sel], pos[sel])
        assert_close(e_m, e[m : m + 1], F64, "energy")
        assert_close(f_m, f[sel], F64, "forces")


@pytest.mark.parametrize("group", ["O(3)", "SO(3)"])
def test_gradcheck_energy_wrt_positions(tmp_path, group):
    path = make_checkpoint(
        tmp_path / "g.ckpt",
        seed=12,
        precision=64,
        num_layers=2,
        embedding_dimension=8,
        num_rbf=6,
        cutoff_lower=0.5,
        equivariance_invariance_group=group,
        charge=True,
    )
    model = tnf.load_model(path, derivative=False)
    z, pos, batch = molecule_batch(("CH3OH", "H2O"), jitter=0.1)
    q = torch.tensor([1.0, -1.0], dtype=F64)

    def energy(p):
        return model(z, p, batch, q=q)[0]

    assert torch.autograd.gradcheck(
        energy, (pos.clone().requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-6
    )


def test_forces_match_central_differences(models):
    model = models["O(3)"]
    z, pos, batch = _chiral_batch()
    _, forces = model(z, pos, batch)
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (7, 2), (15, 0), (20, 2)]:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        e_plus = model(z, plus, batch)[0].sum()
        e_minus = model(z, minus, batch)[0].sum()
        fd = -(e_plus - e_minus) / (2 * h)
        # central differences: O(h^2) truncation ~1e-10 plus rounding eps*|E|/h ~ 1e-10
        assert abs(float(fd - forces[atom, axis])) < 1e-7 * max(1.0, float(forces.abs().max()))


def test_periodic_lattice_shift_and_translation(models):
    model = models["O(3)"]
    z, pos, box = water_box(3, spacing=3.2, seed=5)  # 9.6 A cell, r_c = 4 A (< half cell)
    e, f = model(z, pos, box=box)
    shifted = pos.clone()
    shifted[::4] += box[0] - 2 * box[2]  # move some atoms by lattice vectors
    e_s, f_s = model(z, shifted, box=box)
    assert_close(e_s, e, F64, "energy", "lattice shift")
    assert_close(f_s, f, F64, "forces", "lattice shift")
    e_t, f_t = model(z, pos + torch.tensor([1.3, -2.2, 7.9], dtype=F64), box=box)
    assert_close(e_t, e, F64, "energy", "translation")
    assert_close(f_t, f, F64, "forces", "translation")
    assert float(f.sum(0).abs().max()) < 1e-10 * float(f.abs().max()) * len(z)  # momentum


def test_cutoff_larger_than_half_the_cell(models):
    """A 7 A cell with r_c = 4 A: an atom sees several images of the same neighbour (and of
    itself). The periodic energy equals that of an explicit 3x3x3 supercell divided by 27, and
    every copy of an atom in the supercell feels the force it feels in the small cell."""
    model = models["O(3)"]
    z, pos, box = water_box(2, spacing=3.5, seed=6)
    e, f = model(z, pos, box=box)
    shifts = torch.cartesian_prod(*[torch.arange(3, dtype=F64)] * 3) @ box
    big_pos = (pos[None] + shifts[:, None]).reshape(-1, 3)
    big_z = z.repeat(27)
    e_big, f_big = model(big_z, big_pos, box=3 * box)
    assert_close(e_big / 27, e, F64, "energy", "supercell")
    assert_close(f_big, f.repeat(27, 1), F64, "forces", "supercell")


def test_deterministic(models):
    z, pos, batch = _chiral_batch()
    e1, f1 = models["SO(3)"](z, pos, batch)
    e2, f2 = models["SO(3)"](z, pos, batch)
    assert torch.equal(e1, e2) and torch.equal(f1, f2)


def test_energy_is_smooth_across_the_cutoff(models):
    model = models["O(3)"]
    z = torch.tensor([8, 8])
    energies = []
    for d in (4.0 - 1e-6, 4.0 + 1e-6):
        pos = torch.tensor([[0.0, 0.0, 0.0], [d, 0.0, 0.0]], dtype=F64)
        energies.append(float(model(z, pos)[0]))
    assert abs(energies[0] - energies[1]) < 1e-9


def test_energy_conservation_nve(models):
    """Velocity Verlet, 200 steps of 0.25 fs, float64: total energy drifts far less than the
    kinetic energy it exchanges (a wrong force would drift by ~|F| * displacement)."""
    model = models["O(3)"]
    z, pos, batch = molecule_batch(("CH3OH",), jitter=0.05, seed=7)
    masses = torch.tensor(
        [12.011 if a == 6 else 15.999 if a == 8 else 1.008 for a in z.tolist()], dtype=F64
    )[:, None]
    # units: eV, A, amu -> time unit sqrt(amu A^2 / eV) = 10.1805 fs
    dt = 0.25 / 10.1805
    vel = torch.randn(pos.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    vel = vel * torch.sqrt(0.025 / masses)  # ~ 300 K
    vel -= (masses * vel).sum(0) / masses.sum()
    e_pot, f = model(z, pos, batch)
    totals, kinetic = [], []
    for _ in range(200):
        vel = vel + 0.5 * dt * f / masses
        pos = pos + dt * vel
        e_pot, f = model(z, pos, batch)
        vel = vel + 0.5 * dt * f / masses
        ke = 0.5 * float((masses * vel * vel).sum())
        totals.append(float(e_pot.sum()) + ke)
        kinetic.append(ke)
    drift = max(totals) - min(totals)
    swing = max(kinetic) - min(kinetic)
    assert math.isfinite(drift) and swing > 1e-3
    assert drift < 0.02 * swing, (drift, swing)
