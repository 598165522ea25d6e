"""ASE calculator: energies/forces equal the model's, forces and stress equal finite differences
(float64), lattice-shift invariance, cutoffs beyond half the cell, unit conversion, NVE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from oracle import make_small_checkpoint
from paths import ROOT
from systems import water_box

import tensornet_fast as tnf
from tensornet_fast.integrations.ase import TensorNetCalculator


@pytest.fixture(scope="module")
def ckpt64(tmp_path_factory):
    return make_small_checkpoint(
        tmp_path_factory.mktemp("calc") / "c.ckpt",
        seed=31,
        precision=64,
    )


@pytest.fixture(scope="module")
def model64(ckpt64):
    return tnf.load_model(ckpt64)


def _water_atoms(n=2, spacing=3.3, seed=0, skew=True):
    z, pos, box = water_box(n, spacing=spacing, seed=seed)
    cell = box.numpy().copy()
    if skew:  # make it triclinic
        cell[1, 0] = 0.9
        cell[2, 0], cell[2, 1] = -0.6, 0.7
    return Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell, pbc=True)


def test_matches_model(model64):
    atoms = molecule("CH3CH2OH")
    atoms.calc = TensorNetCalculator(model64)
    e, f = model64(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions))
    assert atoms.get_potential_energy() == pytest.approx(e.item(), rel=1e-14)
    np.testing.assert_allclose(atoms.get_forces(), f.numpy(), rtol=0, atol=1e-13)
    assert atoms.get_potential_energies().sum() == pytest.approx(e.item(), rel=1e-12)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def _energy(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy()


def numerical_stress(atoms, calc, d=1e-6):
    """Central differences of E under a homogeneous strain, (1/V) dE/d(eps), Voigt order."""
    volume = atoms.get_volume()
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    out = np.zeros(6)
    for k, (a, b) in enumerate(voigt):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * d / (1 if a == b else 2)
            strain[b, a] += 0 if a == b else sign * d / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            energies.append(_energy(strained, calc))
        out[k] = (energies[0] - energies[1]) / (2 * d * volume)
    return out


def test_forces_and_stress_equal_finite_differences(model64):
    atoms = _water_atoms()
    calc = TensorNetCalculator(model64)
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-5
    for atom, axis in [(0, 0), (5, 1), (13, 2), (22, 0)]:  # central differences, O(h^2) ~ 1e-10
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        fd = -(_energy(plus, calc) - _energy(minus, calc)) / (2 * h)
        assert abs(fd - forces[atom, axis]) < 1e-7 * np.abs(forces).max()
    stress = atoms.get_stress()
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(
        stress, numerical_stress(atoms, calc), rtol=0, atol=1e-6 * np.abs(stress).max()
    )


def test_per_atom_energies_sum_with_priors(model64):
    atoms = _water_atoms()
    atoms.calc = TensorNetCalculator(model64)
    assert atoms.get_potential_energies().sum() == pytest.approx(
        atoms.get_potential_energy(), rel=1e-12
    )


def test_lattice_shift_and_wrap_invariance(model64):
    atoms = _water_atoms(seed=1)
    atoms.calc = TensorNetCalculator(model64)
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    moved = atoms.copy()
    moved.positions[::3] += moved.cell[0] - 2 * moved.cell[1] + moved.cell[2]
    moved.calc = TensorNetCalculator(model64)
    assert moved.get_potential_energy() == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(moved.get_forces(), f, atol=1e-11)
    np.testing.assert_allclose(moved.get_stress(), s, atol=1e-11)
    wrapped = atoms.copy()
    wrapped.wrap()
    wrapped.calc = TensorNetCalculator(model64)
    assert wrapped.get_potential_energy() == pytest.approx(e, rel=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_small_cell_many_images(ckpt64, backend):
    """A 3.6 A cell with r_c = 4 A (each atom sees its own periodic images): the energy per cell
    equals that of a 2x2x2 supercell / 8, and the stress still matches finite differences."""
    model64 = tnf.load_model(ckpt64, backend=backend)
    atoms = _water_atoms(n=1, spacing=3.6, seed=2)
    atoms.calc = TensorNetCalculator(model64)
    e = atoms.get_potential_energy()
    big = atoms.repeat((2, 2, 2))
    big.calc = TensorNetCalculator(model64)
    assert big.get_potential_energy() / 8 == pytest.approx(e, rel=1e-10)
    numerical = numerical_stress(atoms, atoms.calc)
    np.testing.assert_allclose(atoms.get_stress(), numerical, atol=1e-6 * np.abs(numerical).max())


def test_unit_conversion(model64):
    atoms = molecule("H2O")
    atoms.calc = TensorNetCalculator(model64)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    scaled = atoms.copy()
    scaled.calc = TensorNetCalculator(model64, energy_unit=0.5, length_unit=1.0)
    assert scaled.get_potential_energy() == pytest.approx(0.5 * e, rel=1e-14)
    np.testing.assert_allclose(scaled.get_forces(), 0.5 * f, atol=1e-14)
    # a model in nm: positions are divided by 10 on the way in, forces by 10 on the way out
    nm = atoms.copy()
    nm.calc = TensorNetCalculator(model64, length_unit=10.0)
    expected, grad = model64(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions / 10))
    assert nm.get_potential_energy() == pytest.approx(expected.item(), rel=1e-14)
    np.testing.assert_allclose(nm.get_forces(), grad.numpy() / 10, atol=1e-14)


def test_mixed_pbc_is_refused(model64):
    atoms = _water_atoms()
    atoms.pbc = [True, True, False]
    atoms.calc = TensorNetCalculator(model64)
    with pytest.raises(tnf.InputError, match="mixed periodicity"):
        atoms.get_potential_energy()


def test_nve_conserves_energy(model64):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution  # noqa: I001
    from ase.md.verlet import VelocityVerlet

    atoms = molecule("CH3OH")
    atoms.calc = TensorNetCalculator(model64)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    totals, kinetic = [], []
    for _ in range(120):
        dyn.run(1)
        totals.append(atoms.get_total_energy())
        kinetic.append(atoms.get_kinetic_energy())
    swing = max(kinetic) - min(kinetic)
    assert swing > 1e-3 and max(totals) - min(totals) < 0.02 * swing


@pytest.mark.parametrize(
    "script, args", [("nve_md.py", ["--steps", "50"]), ("optimize.py", ["--molecule", "H2O"])]
)
def test_examples_run(script, args):
    import os
    import subprocess
    import sys

    root = ROOT
    out = subprocess.run(
        [sys.executable, os.path.join(root, "examples", script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "E_tot" in out.stdout or "max force" in out.stdout
