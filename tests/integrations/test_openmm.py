"""OpenMM-ML plugin (tensornet_fast.integrations.openmm): MLPotential("tensornet_fast") through the
openmmml entry point; OpenMM energies and forces equal load_model's after unit conversion (a
molecule, a periodic water box, a torchmd-net 3.1 checkpoint that must not be permuted); an ML
molecule in MM water (mechanical embedding); serialisation; 1 ps of NVE in float64."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch
from ase.build import molecule
from oracle import load_oracle, make_small_checkpoint, oracle_energy_forces
from systems import water_box
from tolerances import assert_close

import tensornet_fast as tnf

openmm = pytest.importorskip("openmm")
openmmml = pytest.importorskip("openmmml")
from openmm import app, unit  # noqa: E402
from openmmml import MLPotential  # noqa: E402

from tensornet_fast.integrations import openmm as tnf_openmm  # noqa: E402

KJ = tnf_openmm.EV_TO_KJ_PER_MOL  # kJ/mol per eV (the checkpoints' energy unit)
NM = tnf_openmm.ANGSTROM_TO_NM  # nm per Angstrom


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A torchmd-net 3.1 checkpoint (blocked weight layout, written by torchmd-net itself)."""
    return make_small_checkpoint(tmp_path_factory.mktemp("omm") / "m.ckpt", seed=41, precision=64)


def _topology(z, box=None, residue_size=None):
    """One chain; one residue per ``residue_size`` atoms (all in one by default)."""
    top = app.Topology()
    chain = top.addChain()
    size = residue_size or len(z)
    for k, zi in enumerate(z):
        if k % size == 0:
            res = top.addResidue("MOL", chain)
        top.addAtom(f"A{k}", app.Element.getByAtomicNumber(int(zi)), res)
    if box is not None:
        top.setPeriodicBoxVectors(np.asarray(box) * NM * unit.nanometer)
    return top


def _state(system, pos_angstrom, box=None, groups=-1):
    integrator = openmm.VerletIntegrator(0.0005)
    platform = openmm.Platform.getPlatformByName("Reference")  # double precision throughout
    context = openmm.Context(system, integrator, platform)
    if box is not None:
        context.setPeriodicBoxVectors(*(np.asarray(box) * NM))
    context.setPositions(np.asarray(pos_angstrom) * NM)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return energy, np.asarray(forces)


def _as_model_units(energy, forces):
    return torch.tensor([[energy / KJ]], dtype=torch.float64), torch.as_tensor(forces / (KJ / NM))


def test_entry_point_registers_the_potential():
    group = importlib.metadata.entry_points(group="openmmml.potentials")
    names = {ep.name: ep.value for ep in group}
    assert names.get("tensornet_fast") == (
        "tensornet_fast.integrations.openmm:TensorNetFastPotentialImplFactory"
    )
    assert "tensornet_fast" in MLPotential._implFactories


def test_molecule_matches_load_model(ckpt):
    atoms = molecule("CH3CH2OH")
    z, pos = atoms.numbers, atoms.positions
    model = tnf.load_model(ckpt)
    ref_e, ref_f = model(torch.as_tensor(z), torch.as_tensor(pos))
    system = MLPotential("tensornet_fast", modelPath=ckpt).createSystem(_topology(z))
    assert not system.usesPeriodicBoundaryConditions()
    e, f = _as_model_units(*_state(system, pos))
    assert_close(e, ref_e, torch.float64, "energy", "OpenMM molecule")
    assert_close(f, ref_f, torch.float64, "forces", "OpenMM molecule")


def test_periodic_water_box_matches_load_model(ckpt):
    z, pos, box = water_box(2, spacing=3.2, seed=7)
    box = box.clone()
    box[1, 0], box[2, 0], box[2, 1] = 0.8, -0.5, 0.6  # triclinic, in OpenMM's reduced form
    model = tnf.load_model(ckpt)
    ref_e, ref_f = model(z, pos, box=box)
    system = MLPotential("tensornet_fast", modelPath=ckpt).createSystem(
        _topology(z.numpy(), box.numpy(), residue_size=3)
    )
    assert system.usesPeriodicBoundaryConditions()
    e, f = _as_model_units(*_state(system, pos.numpy(), box.numpy()))
    assert_close(e, ref_e, torch.float64, "energy", "OpenMM water box")
    assert_close(f, ref_f, torch.float64, "forces", "OpenMM water box")


def test_torchmdnet_checkpoint_is_not_permuted(ckpt):
    """The file torchmd-net 3.1 wrote gives torchmd-net's own energy through OpenMM (its
    loader with check_errors=False would read the blocked layout as interleaved)."""
    atoms = molecule("CH3CH2OH")
    z, pos = torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions)
    oracle_e, _ = oracle_energy_forces(load_oracle(ckpt), z, pos)
    system = MLPotential("tensornet_fast", modelPath=ckpt).createSystem(_topology(z.numpy()))
    e, _ = _as_model_units(*_state(system, pos.numpy()))
    assert_close(e, oracle_e, torch.float64, "energy", "OpenMM vs torchmd-net 3.1")


def test_load_arguments_and_units_pass_through(ckpt):
    """precision / backend / filter_mode reach load_model; lengthScale and energyScale convert
    a model taken to be in kcal/mol and nm."""
    atoms = molecule("CH3OH")
    z, pos = atoms.numbers, atoms.positions
    potential = MLPotential(
        "tensornet_fast",
        modelPath=ckpt,
        precision=32,
        backend="cpu",
        filter_mode="exact",
        lengthScale=1.0,
        energyScale=4.184,
    )
    model = potential._impl.model
    assert (model.dtype, model.backend, model.filter_mode) == (torch.float32, "cpu", "exact")
    system = potential.createSystem(_topology(z))
    pos_nm = pos * NM  # positions in nm are the model's lengths here
    energy, forces = _state(system, pos_nm / NM)
    ref_e, ref_f = model(torch.as_tensor(z), torch.as_tensor(pos_nm, dtype=torch.float32))
    e = torch.tensor([[energy / 4.184]], dtype=torch.float64)
    assert_close(e, ref_e, torch.float32, "energy", "kcal/nm")
    assert_close(torch.as_tensor(forces / 4.184), ref_f, torch.float32, "forces", "kcal/nm")


def test_mixed_system_ml_molecule_in_mm_water(ckpt):
    """Ethanol (ML) among 8 MM waters: the ML force group holds exactly the model's energy and
    forces of the ML atoms; the MM group equals the MM system without ML-ML interactions."""
    eth = molecule("CH3CH2OH")
    wz, wpos, _ = water_box(2, spacing=3.4, seed=3)
    z = np.concatenate([eth.numbers, wz.numpy()])
    pos = np.concatenate([eth.positions + 7.0, wpos.numpy() + 0.5])  # ethanol amid the waters
    n_ml = len(eth)
    ml = list(range(n_ml))
    top = _topology(z)

    def mm_system(exclude_ml: bool):
        system = openmm.System()
        for zi in z:
            system.addParticle(app.Element.getByAtomicNumber(int(zi)).mass)
        nb = openmm.NonbondedForce()
        nb.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
        for k, zi in enumerate(z):
            q = {1: 0.2, 6: -0.1, 8: -0.4}[int(zi)] if k < n_ml else (0.417 if zi == 1 else -0.834)
            nb.addParticle(q, 0.3, 0.5)
        if exclude_ml:
            for a in ml:
                for b in ml[:a]:
                    nb.addException(a, b, 0.0, 1.0, 0.0)
        system.addForce(nb)
        return system

    potential = MLPotential("tensornet_fast", modelPath=ckpt)
    mixed = potential.createMixedSystem(top, mm_system(False), ml, forceGroup=1)
    e_ml, f_ml = _state(mixed, pos, groups={1})
    model = tnf.load_model(ckpt)
    ref_e, ref_f = model(torch.as_tensor(z[:n_ml]), torch.as_tensor(pos[:n_ml]))
    e, f = _as_model_units(e_ml, f_ml)
    assert_close(e, ref_e, torch.float64, "energy", "ML group of the mixed system")
    assert_close(f[:n_ml], ref_f, torch.float64, "forces", "ML group of the mixed system")
    assert np.all(f_ml[n_ml:] == 0)
    e_mm, f_mm = _state(mixed, pos, groups={0})
    want_e, want_f = _state(mm_system(True), pos)
    assert e_mm == pytest.approx(want_e, rel=1e-12)
    np.testing.assert_allclose(f_mm, want_f, rtol=0, atol=1e-9 * np.abs(want_f).max())


def test_serialised_system_gives_the_same_energy(ckpt):
    atoms = molecule("H2O")
    system = MLPotential("tensornet_fast", modelPath=ckpt).createSystem(_topology(atoms.numbers))
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    assert _state(copy, atoms.positions)[0] == _state(system, atoms.positions)[0]


def test_bad_input_is_named(ckpt):
    top = _topology([8, 1, 1])
    top.addAtom("X", None, next(top.residues()))
    with pytest.raises(tnf.InputError, match="has no element"):
        MLPotential("tensornet_fast", modelPath=ckpt).createSystem(top)
    with pytest.raises(tnf.InputError, match="lengthScale"):
        MLPotential("tensornet_fast", modelPath=ckpt, lengthScale=-1.0)
    with pytest.raises(tnf.InputError, match="skin"):
        MLPotential("tensornet_fast", modelPath=ckpt).createSystem(_topology([8, 1, 1]), skin=-1)


@pytest.mark.slow
def test_nve_one_picosecond_float64():
    """1 ps of velocity Verlet (0.5 fs) on ethanol with the bundled model in float64: the total
    energy stays within 2% of the mean kinetic energy of its start (measured: docs/openmm.md)."""
    atoms = molecule("CH3CH2OH")
    potential = MLPotential("tensornet_fast", modelPath="default", precision=64)
    system = potential.createSystem(_topology(atoms.numbers), removeCMMotion=False)
    integrator = openmm.VerletIntegrator(0.0005)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * NM)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    totals, kinetic = [], []
    for _ in range(20):
        integrator.step(100)
        state = context.getState(getEnergy=True)
        ke = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        pe = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        totals.append(ke + pe)
        kinetic.append(ke)
    drift = max(abs(t - totals[0]) for t in totals)
    print(f"NVE 1 ps: max |E - E0| {drift:.4f} kJ/mol, mean kinetic {np.mean(kinetic):.2f} kJ/mol")
    assert drift < 0.02 * np.mean(kinetic), (drift, np.mean(kinetic), totals)
