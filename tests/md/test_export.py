"""Export for C++ hosts (tensornet_fast.md.export): the AOTInductor package, run by the C++ example
program (examples/cpp/run_exported.cpp, built here with g++) as a subprocess without Python,
gives the energies and forces of the eager model; the traced graph also gives the periodic
stress. One package and one binary per session (AOTInductor compiles for ~10-70 s on 2 cores).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import molecule
from oracle import make_small_checkpoint
from paths import ROOT
from systems import water_box
from tolerances import assert_close

import tensornet_fast as tnf
from tensornet_fast.md import export as tnf_export
from tensornet_fast.md.traceable import dense_edges

CPP = os.path.join(ROOT, "examples", "cpp")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # Small but complete: 1 layer, a ZBL prior (pair priors are part of the graph), float32.
    return make_small_checkpoint(tmp_path_factory.mktemp("export") / "m.ckpt", seed=5, num_layers=1)


@pytest.fixture(scope="module")
def model(ckpt):
    return tnf.load_model(ckpt, backend="reference")


@pytest.fixture(scope="module")
def _cpp_build(tmp_path_factory):
    """Starts g++ on examples/cpp/run_exported.cpp in the background (~20 s), so that it
    overlaps with the export (`package` depends on this fixture, `binary` waits for it)."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        yield None
        return
    out = tmp_path_factory.mktemp("cpp") / "run_exported"
    proc = subprocess.Popen(
        ["bash", os.path.join(CPP, "build.sh"), sys.executable, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, str(out)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def package(_cpp_build, ckpt, tmp_path_factory):
    """Written by the command line (`tensornet-fast export`), which calls export_model."""
    from tensornet_fast.cli import main

    path = tmp_path_factory.mktemp("pkg") / "molecule.pt2"
    assert main(["export", "--model", str(ckpt), "--out", str(path)]) == 0
    return str(path)


@pytest.fixture(scope="module")
def binary(_cpp_build, package):
    if _cpp_build is None:
        pytest.skip("no C++ compiler (g++ or $CXX) to build examples/cpp/run_exported.cpp")
    proc, out = _cpp_build
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    return out


def _write_xyz(path, z, pos, box=None, symbols=False):
    from ase.data import chemical_symbols

    lines = [
        str(len(z)),
        "box=" + " ".join(f"{v:.17g}" for v in box.flatten()) if box is not None else "molecule",
    ]
    for zi, p in zip(z.tolist(), pos.tolist()):
        name = chemical_symbols[zi] if symbols else str(zi)
        lines.append(f"{name} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g}")
    path.write_text("\n".join(lines) + "\n")


def _run(binary, package, xyz):
    # No Python in the child: a clean environment, and the binary must not link libpython.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([binary, str(package), str(xyz)], capture_output=True, text=True, env=env)
    return res


def _parse(stdout):
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("energy ")
    energy = float(lines[0].split()[1])
    n = int(lines[1].split()[1])
    forces = np.array([[float(v) for v in line.split()] for line in lines[2 : 2 + n]])
    return energy, forces


@pytest.mark.parametrize("name", ["biphenyl", "CH3CH2OH"])
def test_cpp_program_matches_eager(binary, package, model, name, tmp_path):
    atoms = molecule(name)
    rng = np.random.default_rng(1)
    z = torch.as_tensor(atoms.numbers)
    pos = torch.as_tensor(
        atoms.positions + 0.05 * rng.normal(size=atoms.positions.shape), dtype=torch.float32
    )
    xyz = tmp_path / "in.xyz"
    _write_xyz(xyz, z, pos, symbols=name == "biphenyl")  # element symbols and numbers both read
    res = _run(binary, package, xyz)
    assert res.returncode == 0, res.stderr
    energy, forces = _parse(res.stdout)
    ref_e, ref_f = model(z, pos)
    assert_close(torch.tensor([[energy]]), ref_e, torch.float32, "energy", f"C++ {name}")
    assert_close(torch.as_tensor(forces), ref_f, torch.float32, "forces", f"C++ {name}")


def test_cpp_program_has_no_python(binary):
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if ldd.returncode != 0:
        pytest.skip("ldd not available")
    assert "libpython" not in ldd.stdout
    assert "libtorch" in ldd.stdout


def test_cpp_program_rejects_bad_input(binary, package, tmp_path):
    xyz = tmp_path / "bad.xyz"
    _write_xyz(xyz, torch.tensor([6, 25]), torch.tensor([[0.0, 0, 0], [1.2, 0, 0]]))
    res = _run(binary, package, xyz)
    assert res.returncode == 1 and "outside the model's 0..19" in res.stderr
    periodic = tmp_path / "box.xyz"
    _write_xyz(
        periodic,
        torch.tensor([6, 8]),
        torch.tensor([[0.0, 0, 0], [1.2, 0, 0]]),
        box=torch.eye(3) * 10,
    )
    res = _run(binary, package, periodic)
    assert res.returncode == 1 and "isolated molecules" in res.stderr


def _molecules():
    """One water (3 atoms), then water clusters of 24, 81 and 375 atoms as one molecule."""
    for n in (1, 2, 3, 5):
        yield water_box(n, seed=3, dtype=torch.float32)[:2]


def test_package_in_python_and_metadata(package, model):
    """torch's own loader, as a user would, from 3 to 375 atoms: a package must not be valid
    only near the example's size (0.2's package of the bundled model stopped at 8 atoms,
    issue #24; the fix: md.export.outer_products_as_mul)."""
    runner = tnf_export.load_exported(package)
    for z, pos in _molecules():
        energy, forces = runner(z, pos)
        ref_e, ref_f = model(z, pos)
        assert_close(energy, ref_e, torch.float32, "energy", f"AOTI water x{len(z)}")
        assert_close(forces, ref_f, torch.float32, "forces", f"AOTI water x{len(z)}")
    meta = runner.get_metadata()
    assert meta["periodic"] == "0" and meta["max_z"] == "20" and meta["cutoff"] == "4.0"


def test_periodic_package_any_cell(ckpt, model, tmp_path):
    """Periodic cells of 24 to 192 atoms through torch's loader against the eager model; and
    the progress lines export_model reports while it runs (minutes: the CLI prints them)."""
    lines = []
    path = tnf_export.export_model(ckpt, tmp_path / "periodic.pt2", periodic=True, log=lines.append)
    stages = ("model loaded", "traced", "exported; compiling", "compiled and packaged")
    assert len(lines) == len(stages), lines
    for line, stage in zip(lines, stages):
        assert re.match(r"\[ *\d+\.\d s\] " + stage, line), lines
    runner = tnf_export.load_exported(path)
    for n in (2, 3, 4):  # 24, 81, 192 atoms; cells 8.2 .. 16.4 A (>= the 4 A cutoff)
        z, pos, box = water_box(n, spacing=4.1, seed=n, dtype=torch.float32)
        energy, forces, stress = runner(z, pos, box)
        ref = model.compute(z, pos, box=box, stress=True)
        what = f"AOTI periodic {len(z)} atoms"
        assert_close(energy, ref["energy"], torch.float32, "energy", what)
        assert_close(forces, ref["forces"], torch.float32, "forces", what)
        assert_close(stress, ref["stress"][0], torch.float32, "forces", what + " stress")


def test_no_outer_product_mm_left(ckpt):
    """The traced graph holds mm calls, none with inner size 1 (Inductor guards the atom count
    on those); the rewrite is the same product."""
    model = tnf.load_model(ckpt, backend="reference")
    module = tnf_export.trace_model(model)
    mms = [n for n in module.gm.graph.nodes if n.target is torch.ops.aten.mm.default]
    assert mms and all(n.args[0].meta["val"].shape[-1] != 1 for n in mms)
    assert tnf_export.outer_products_as_mul(module.gm) == 0

    class Outer(torch.nn.Module):
        def forward(self, a, b):
            return torch.mm(a, b)

    from torch.fx.experimental.proxy_tensor import make_fx

    a, b = torch.randn(7, 1), torch.randn(1, 24)
    gm = make_fx(Outer())(a, b)
    assert tnf_export.outer_products_as_mul(gm) == 1
    assert torch.equal(gm(a, b), a * b)


@pytest.mark.parametrize("precision", [64])
def test_traced_periodic_graph_energy_forces_stress(ckpt, precision):
    """The graph that export compiles, run eagerly: a triclinic cell, stress included."""
    model = tnf.load_model(ckpt, backend="reference", precision=precision)
    dtype = model.dtype
    module = tnf_export.trace_model(model, periodic=True, images=1)
    z, pos, box = water_box(2, spacing=3.3, seed=2, dtype=dtype)
    box = box.clone()
    box[1, 0], box[2, 0], box[2, 1] = 0.8, -0.5, 0.6
    energy, forces, stress = module(z, pos, box)
    ref = model.compute(z, pos, box=box, stress=True)
    assert_close(energy, ref["energy"], dtype, "energy", "traced periodic")
    assert_close(forces, ref["forces"], dtype, "forces", "traced periodic")
    assert_close(stress, ref["stress"][0], dtype, "forces", "traced periodic stress")


def test_dense_edges_match_radius_graph():
    """The in-graph neighbour search returns the radius graph's edges in its order."""
    z, pos, box = water_box(2, spacing=3.0, seed=4)
    box = box.clone()
    box[2, 0] = 0.7
    for b in (None, box):
        cutoff = 4.5
        edges = dense_edges(pos, cutoff, b, images=2)
        nl = tnf.radius_graph_full(pos, cutoff, box=b, loop=True)
        assert torch.equal(edges.edge_index, nl.edge_index)
        if b is not None:
            assert torch.equal(edges.shifts, nl.shifts)


def test_export_refuses_untraceable_backend(ckpt, tmp_path):
    from tensornet_fast.errors import NotTraceable

    model = tnf.load_model(ckpt, backend="cpu")
    with pytest.raises(NotTraceable, match="backend='reference'"):
        tnf_export.export_model(model, tmp_path / "x.pt2")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_lammps_trace_of_the_bundled_model(backend):
    """The LAMMPS function traced for the bundled model (Atomref prior, mean/std: parameters
    indexed by the traced z) equals the eager call on a molecule whose atoms are all local.
    The bundled model's --lammps export failed in tracing before (TrackedParameter constants)."""
    from tensornet_fast.neighbors import radius_graph_full

    model = tnf.load_model("default")
    if backend == "cpu" and model.backend_impl.ops() is None:
        pytest.fail("the cpu backend's compiled extension is not built")
    gm = tnf_export.trace_lammps(model, backend=backend)
    atoms = molecule("CH3CH2OH")
    z = torch.as_tensor(atoms.numbers)
    pos = torch.as_tensor(atoms.positions, dtype=torch.float32)
    nl = radius_graph_full(pos, float(model.config.cutoff_upper), loop=True)
    offsets = torch.zeros(nl.edge_index.shape[1], 3)
    energy, atom_energies, forces, _ = gm(z, pos, nl.edge_index, offsets, torch.tensor([len(z)]))
    ref_energy, ref_forces = model(z, pos)
    f32 = torch.float32
    assert_close(energy.reshape(1), ref_energy.reshape(1), f32, "energy", "lammps trace")
    assert_close(atom_energies.sum().reshape(1), ref_energy.reshape(1), f32, "energy", "sum")
    assert_close(forces, ref_forces, f32, "forces", "lammps trace")
