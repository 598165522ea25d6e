"""``tensornet-fast energies`` as a batch job: one row per record of every file whatever is
wrong with it, periodic cells with stress, unit conversion, resume without duplicates, the lock,
Ctrl-C, inputs never overwritten, the same numbers and formatting as ``screen``."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read, write
from systems import water_box
from tolerances import assert_close

import tensornet_fast as tnf
from tensornet_fast.cli import DEFAULT_MOLECULES, main
from tensornet_fast.screening.writer import open_sink, read_results

WATER = "O 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two shared cores: one torch thread is faster than two under load."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    return tnf.load_model("default")


def energies(*args) -> int:
    return main(["energies", "--progress", "none", *map(str, args)])


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def model_energy(model, numbers, positions, box=None):
    e, f = model(
        torch.as_tensor(numbers),
        torch.as_tensor(positions, dtype=model.dtype),
        box=None if box is None else torch.as_tensor(box, dtype=model.dtype),
    )
    return e.item(), f


def test_every_bad_record_gets_a_row_and_the_run_continues(tmp_path, model, capsys):
    """Each kind that used to stop the run with a traceback (unknown element, Z=200, a lying
    count line, an empty / binary file) or was read wrongly (multi-record SDF: only the
    first record) is one row; the good structures around them get the model's energies."""
    Chem = pytest.importorskip("rdkit.Chem")
    from rdkit.Chem import AllChem

    xyz = tmp_path / "mixed.xyz"
    xyz.write_text(
        f"3\ngood\n{WATER}"
        "2\nunknown\nQq 0 0 0\nH 0 0 1\n"
        "2\nz200\n200 0 0 0\nH 0 0 1\n"
        f"2\nlying count\n{WATER}"
        f"3\ngood again\n{WATER}"
    )
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    binary = tmp_path / "binary.xyz"
    binary.write_bytes(b"\x7fELF\x00\x00" * 100)
    blocks, mols = [], []
    for k, smi in enumerate(["CCO", "O", "CC(=O)O"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=k)
        blocks.append(Chem.MolToMolBlock(mol) + "$$$$\n")
        mols.append(Chem.MolFromMolBlock(blocks[-1], removeHs=False))  # the file's rounding
    sdf = tmp_path / "lib.sdf"
    sdf.write_text("".join(blocks))
    out = tmp_path / "out.csv"
    assert energies(xyz, empty, binary, sdf, "--out", out) == 0
    assert "Traceback" not in capsys.readouterr().err
    rows = {r["id"]: r for r in read_results(str(out))}
    assert list(rows) == [  # input order, every record, each once
        *(f"mixed.xyz:{k}" for k in range(5)),
        "empty.xyz:0",
        "binary.xyz:0",
        "lib.sdf:0",
        "lib.sdf:1",
        "lib.sdf:2",
    ]
    status = {k: r["status"] for k, r in rows.items()}
    assert "unknown element 'Qq'" in status["mixed.xyz:1"]
    assert "[200] are not elements" in status["mixed.xyz:2"]
    assert "count line says 2 atoms but 3" in status["mixed.xyz:3"]
    assert "no structures" in status["empty.xyz:0"] and "binary" in status["binary.xyz:0"]
    assert [rows[f"lib.sdf:{k}"]["formula"] for k in range(3)] == ["C2H6O", "H2O", "C2H4O2"]
    ok = ["mixed.xyz:0", "mixed.xyz:4", "lib.sdf:0", "lib.sdf:1", "lib.sdf:2"]
    assert all(status[k] == "ok" for k in ok)
    water = np.array([[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]])
    refs = [model_energy(model, [8, 1, 1], water)[0]] * 2
    for mol in mols:  # (ASE would read only the first record of the SDF)
        z = [a.GetAtomicNum() for a in mol.GetAtoms()]
        refs.append(model_energy(model, z, mol.GetConformer().GetPositions())[0])
    got = torch.tensor([rows[k]["energy_eV"] for k in ok], dtype=torch.float64)
    assert_close(got, torch.tensor(refs, dtype=torch.float64), model.dtype, "energy", "energies")


def test_periodic_cells_energy_forces_stress(tmp_path):
    """Periodic extxyz: energies, forces and stress equal the ASE calculator's (whose stress
    is tested against finite differences); a slab (pbc T T F) is an error row, not 3-D."""
    z, pos, box = water_box(2, spacing=3.3, seed=4)
    cell = box.numpy().copy()
    cell[1, 0] = 0.8  # triclinic
    crystal = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell, pbc=True)
    slab = crystal.copy()
    slab.pbc = [True, True, False]
    path = tmp_path / "cells.extxyz"
    write(str(path), [crystal, slab, Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])])
    out = tmp_path / "e.csv"
    assert energies(path, "--out", out, "--precision", "64", "--forces", "--stress") == 0
    rows = read_results(str(out))
    assert rows[0]["status"] == "ok" and rows[2]["status"] == "ok"
    assert "mixed periodicity" in rows[1]["status"] and rows[1]["energy_eV"] is None
    crystal = read(str(path), index="0")  # the file's rounding of the positions
    crystal.calc = tnf.TensorNetCalculator("default", precision=64)
    assert rows[0]["energy_eV"] == pytest.approx(crystal.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(
        np.reshape(rows[0]["forces_eV_per_A"], (-1, 3)), crystal.get_forces(), atol=1e-10
    )
    np.testing.assert_allclose(rows[0]["stress_eV_per_A3"], crystal.get_stress(), atol=1e-10)
    assert rows[2]["stress_eV_per_A3"] is None  # a molecule has no stress
    assert len(rows[2]["forces_eV_per_A"]) == 6


def test_unit_conversion(tmp_path):
    """--energy-unit / --length-unit: a model 'in kcal/mol and nm' gives eV and Angstrom."""
    model64 = tnf.load_model("default", precision=64)
    atoms = read(DEFAULT_MOLECULES, index="4")
    out = tmp_path / "u.csv"
    args = ["--precision", "64", "--forces", "--energy-unit", "0.5", "--length-unit", "2.0"]
    assert energies(DEFAULT_MOLECULES, "--out", out, *args) == 0
    row = read_results(str(out))[4]
    e, f = model_energy(model64, atoms.numbers, atoms.positions / 2.0)
    assert row["energy_eV"] == pytest.approx(0.5 * e, rel=1e-12)
    np.testing.assert_allclose(row["forces_eV_per_A"], (0.25 * f).reshape(-1), atol=1e-12)
    assert row["fmax_eV_per_A"] == pytest.approx(0.25 * f.norm(dim=1).max().item(), rel=1e-12)
    assert energies(DEFAULT_MOLECULES, "--energy-unit", "-1") == 2


def _frames_file(tmp_path, copies: int):
    path = tmp_path / "many.xyz"
    text = open(DEFAULT_MOLECULES).read()
    path.write_text(text * copies)
    return path, copies * len(read(DEFAULT_MOLECULES, index=":"))


def test_interrupt_then_resume_without_duplicates(tmp_path, capsys):
    from tensornet_fast.cli.options import run_job
    from tensornet_fast.screening import ScreenSpec

    path, n = _frames_file(tmp_path, 4)
    out = str(tmp_path / "r.csv")
    spec = ScreenSpec(batch_atoms=30, periodic=True, ordered=True)

    def stop(k):
        if k == 3:
            raise KeyboardInterrupt

    assert run_job("energies", [str(path)], out, spec, progress="none", on_write=stop) == 130
    err = capsys.readouterr().err
    assert "re-run the same command to resume" in err.lower() and "Traceback" not in err
    partial = read_results(out)
    assert 0 < len(partial) < n
    assert energies(path, "--out", out, "--batch-atoms", "30") == 0
    assert "already in" in capsys.readouterr().err
    rows = read_results(out)
    assert [r["id"] for r in rows] == [f"many.xyz:{k}" for k in range(n)]
    full = str(tmp_path / "full.csv")
    assert energies(path, "--out", full) == 0
    assert [r["energy_eV"] for r in rows] == [r["energy_eV"] for r in read_results(full)]


def test_second_concurrent_run_is_refused(tmp_path, capsys):
    out = str(tmp_path / "r.csv")
    holder = open_sink(out, ["id"])  # a first run holds the output
    try:
        assert energies(DEFAULT_MOLECULES, "--out", out) == 2
    finally:
        holder.close()
    assert "another run is writing" in capsys.readouterr().err


def test_inputs_and_foreign_files_are_never_modified(tmp_path, capsys):
    inp = tmp_path / "in.xyz"
    inp.write_text(f"3\nwater\n{WATER}")
    before = digest(inp)
    assert energies(inp, "--out", inp) == 2
    assert digest(inp) == before
    assert "is the input" in capsys.readouterr().err
    foreign = tmp_path / "notes.csv"
    foreign.write_text("mine,not yours\n1,2")
    for command in ("energies", "screen"):
        rc = main([command, str(inp), "--out", str(foreign), "--progress", "none"])
        assert rc == 2 and foreign.read_text() == "mine,not yours\n1,2"
        assert "left untouched" in capsys.readouterr().err
    assert main(["screen", str(inp), "--out", str(tmp_path), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err
    assert energies(tmp_path / "missing.xyz") == 2
    assert "does not exist" in capsys.readouterr().err


def test_energies_and_screen_give_the_same_numbers_and_formatting(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert energies(DEFAULT_MOLECULES, "--out", a) == 0
    assert main(["screen", DEFAULT_MOLECULES, "--out", str(b), "--progress", "none"]) == 0

    def cells(path):
        with open(path, newline="") as fh:
            return {r["id"]: (r["energy_eV"], r["fmax_eV_per_A"]) for r in csv.DictReader(fh)}

    ea, eb = cells(a), cells(b)
    assert ea == eb and len(ea) == 12
    assert all(len(e.split(".")[1]) <= 8 for e, _ in ea.values())  # float32 digits, not 17
