"""Readers: a record that does not mean exactly one structure is an error record naming the
problem (lying XYZ count lines, mixed periodicity, SDF without '$$$$', 2D drawings, empty and
binary files, oversized SMILES); every record of every file is read; ids are stable."""

from __future__ import annotations

import numpy as np
import pytest

from tensornet_fast.screening.elements import hill_formula
from tensornet_fast.screening.readers import (
    check_inputs,
    describe,
    iter_raw,
    parse_record,
    short_error,
)

WATER = "O 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n"
MAX_Z = 18  # the bundled model's max_z (H..Cl)


def records(path, periodic=True):
    return [parse_record(r, MAX_Z, 0, periodic) for r in iter_raw([str(path)])]


def test_count_line_smaller_than_atom_lines_is_an_error_not_a_fragment(tmp_path):
    """Water with a count line of 2 used to be scored as HO (status ok)."""
    path = tmp_path / "w.xyz"
    path.write_text(f"2\nwater\n{WATER}3\nwater\n{WATER}")
    recs = records(path)
    assert [r.id for r in recs] == ["w.xyz:0", "w.xyz:1"]  # the extra line is not a record
    assert not recs[0].ok and "count line says 2 atoms but 3 atom lines" in recs[0].error
    assert recs[1].ok and hill_formula(recs[1].z) == "H2O"


def test_count_line_larger_than_atom_lines_is_an_error_and_the_next_frame_survives(tmp_path):
    path = tmp_path / "w.xyz"
    path.write_text(f"4\nwater\n{WATER}3\nwater\n{WATER}5\nend\n{WATER}")
    recs = records(path)
    assert [r.ok for r in recs] == [False, True, False]
    assert "says 4 atoms but only 3 atom lines" in recs[0].error
    assert "file ends after 3" in recs[2].error
    np.testing.assert_array_equal(recs[1].z, [8, 1, 1])


def test_stray_lines_between_frames(tmp_path):
    path = tmp_path / "w.xyz"
    path.write_text(f"3\nwater\n{WATER}END\n3\nwater\n{WATER}")
    recs = records(path)
    assert [r.ok for r in recs] == [True, False, True]  # the stray line is its own error row
    assert "expected an atom-count line" in recs[1].error and "END" in recs[1].error


@pytest.mark.parametrize("flags", ["T T F", "F F T", "T F F"])
def test_mixed_periodicity_is_an_error(tmp_path, flags):
    pytest.importorskip("ase")
    path = tmp_path / "slab.xyz"
    path.write_text(f'3\nLattice="6 0 0 0 6 0 0 0 20" pbc="{flags}"\n{WATER}')
    (rec,) = records(path)
    assert not rec.ok and "mixed periodicity" in rec.error and flags in rec.error


def test_periodic_extxyz_has_a_cell_and_screen_refuses_it(tmp_path):
    pytest.importorskip("ase")
    path = tmp_path / "box.xyz"
    path.write_text(f'3\nLattice="6 0 0 0 7 0 0 0 8" pbc="T T T"\n{WATER}')
    (rec,) = records(path)
    assert rec.ok and rec.periodic
    np.testing.assert_array_equal(rec.cell, np.diag([6.0, 7.0, 8.0]))
    (rec,) = records(path, periodic=False)
    assert not rec.ok and "periodic cell" in rec.error
    # a cell with pbc all F is a molecule (the cell means nothing then)
    path.write_text(f'3\nLattice="6 0 0 0 7 0 0 0 8" pbc="F F F"\n{WATER}')
    (rec,) = records(path, periodic=False)
    assert rec.ok and not rec.periodic


def test_singular_cell_is_an_error(tmp_path):
    pytest.importorskip("ase")
    path = tmp_path / "flat.xyz"
    path.write_text(f'3\nLattice="6 0 0 0 7 0 0 0 0" pbc="T T T"\n{WATER}')
    (rec,) = records(path)
    assert not rec.ok and "singular" in rec.error


def test_bad_atoms_name_what_is_wrong(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text(
        "2\n\nQq 0 0 0\nH 0 0 1\n"  # unknown element
        "2\n\n200 0 0 0\nH 0 0 1\n"  # Z=200
        "2\n\n0 0 0 0\nH 0 0 1\n"  # Z=0 is not an element
        "2\n\nBr 0 0 0\nH 0 0 1.4\n"  # an element beyond the model's table
        "2\n\nH 0 0 nan\nH 0 0 1\n"
        "2\n\nH 0 0 0\nH 0 0\n"  # 3 fields
        "2\n\nH 0 0 x\nH 0 0 1\n"
        "0\nempty\n"
    )
    errors = [r.error for r in records(path)]
    assert "unknown element 'Qq'" in errors[0]
    assert "[200] are not elements" in errors[1]
    assert "[0] are not elements" in errors[2]
    assert "Br (Z=35)" in errors[3]
    assert "NaN" in errors[4]
    assert "3 fields" in errors[5]
    assert "bad coordinates" in errors[6]
    assert "no atoms" in errors[7]
    assert all(e.startswith("error: ") for e in errors)


def test_empty_binary_and_comment_only_files_give_one_error_row(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    binary = tmp_path / "bin.sdf"
    binary.write_bytes(bytes(range(256)) * 20)
    comments = tmp_path / "c.smi"
    comments.write_text("smiles name\n# nothing here\n\n")
    for path, words in [(empty, "no structures"), (binary, "binary"), (comments, "no structures")]:
        (rec,) = records(path)
        assert rec.id == f"{path.name}:0" and words in rec.error


def test_missing_directory_and_duplicate_inputs_are_refused_up_front(tmp_path):
    from tensornet_fast import InputError

    ok = tmp_path / "a.xyz"
    ok.write_text(f"3\n\n{WATER}")
    for paths, words in [
        ([str(tmp_path / "nope.xyz")], "does not exist"),
        ([str(tmp_path)], "is a directory"),
        ([str(ok), str(ok)], "more than once"),
        ([str(tmp_path / "a.xyz.gz")], "compressed"),
        ([], "no input"),
    ]:
        with pytest.raises(InputError, match=words):
            check_inputs(paths)


def _molblock(smiles, seed=0):
    Chem = pytest.importorskip("rdkit.Chem")
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return Chem.MolToMolBlock(mol)


def test_every_record_of_a_multi_record_sdf(tmp_path):
    blocks = [_molblock(s) for s in ("CCO", "O", "CC(=O)O", "N")]
    path = tmp_path / "lib.sdf"
    path.write_text("".join(b + "$$$$\n" for b in blocks))
    recs = records(path)
    assert [hill_formula(r.z) for r in recs] == ["C2H6O", "H2O", "C2H4O2", "H3N"]


def test_sdf_record_with_two_molecules_is_an_error(tmp_path):
    path = tmp_path / "two.sdf"
    path.write_text(_molblock("CCO") + _molblock("O") + "$$$$\n" + _molblock("N") + "$$$$\n")
    recs = records(path)
    assert "2 molecule blocks" in recs[0].error and "$$$$" in recs[0].error
    assert recs[1].ok


def test_sdf_errors_carry_rdkit_reason_and_2d_drawings_are_refused(tmp_path):
    block = _molblock("O").splitlines()
    counts = block[3]
    short = block[:3] + ["  2" + counts[3:]] + block[4:]  # count says 2 atoms, 3 follow
    flat = [block[0], "     RDKit          2D", *block[2:]]
    flat = [ln[:20] + "    0.0000" + ln[30:] if len(ln) > 60 else ln for ln in flat]
    path = tmp_path / "bad.sdf"
    path.write_text("\n".join(short) + "\n$$$$\n" + "\n".join(flat) + "\n$$$$\n")
    recs = records(path)
    # RDKit's reason is part of the status
    assert recs[0].error.startswith("error: unparsable SDF record: Cannot convert")
    assert "2D coordinates" in recs[1].error


def test_huge_smiles_is_an_error_that_names_the_problem(tmp_path):
    pytest.importorskip("rdkit")
    path = tmp_path / "big.smi"
    path.write_text("C" * 2_000_000 + " huge\nCCO ethanol\nC1CC( broken\n")
    recs = records(path)
    assert "2000000 characters" in recs[0].error
    assert recs[1].ok and recs[1].name == "ethanol"
    assert "invalid SMILES" in recs[2].error and "syntax error" in recs[2].error


def test_error_messages_are_never_empty():
    assert describe(MemoryError()) == "MemoryError (no message)"
    assert describe(RuntimeError("")) == "RuntimeError (no message)"
    assert describe(ValueError("bad thing")) == "bad thing"
    assert short_error(MemoryError()) == "error: MemoryError (no message)"
    assert short_error("") == "error: unknown failure (no message)"
    assert len(short_error("x" * 10_000)) == len("error: ") + 300  # bounded, marked "..."


def test_other_formats_through_ase(tmp_path):
    """cif / POSCAR / traj are read by ASE, frame by frame, with their cells."""
    ase_io = pytest.importorskip("ase.io")
    from ase import Atoms

    atoms = Atoms("OH2", positions=[[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]])
    atoms.cell = np.diag([6.0, 7.0, 8.0])
    atoms.pbc = True
    poscar = tmp_path / "POSCAR"
    ase_io.write(str(poscar), atoms, format="vasp")
    traj = tmp_path / "t.traj"
    ase_io.write(str(traj), [atoms, atoms.copy()])
    slab = atoms.copy()
    slab.pbc = [True, True, False]
    slab_path = tmp_path / "slab.traj"
    ase_io.write(str(slab_path), slab)
    (rec,) = records(poscar)
    assert rec.ok and rec.periodic and hill_formula(rec.z) == "H2O"
    np.testing.assert_allclose(rec.cell, atoms.cell.array)
    assert [r.ok for r in records(traj)] == [True, True]
    (rec,) = records(slab_path)
    assert "mixed periodicity" in rec.error
    junk = tmp_path / "junk.dat"
    junk.write_text("this is not a structure\n")
    (rec,) = records(junk)
    assert not rec.ok and "ASE cannot read" in rec.error


def test_resume_skips_by_index(tmp_path):
    path = tmp_path / "w.xyz"
    path.write_text(f"3\n\n{WATER}" * 4)
    done = {"w.xyz": np.array([True, False, True])}
    skipped = []
    raws = list(iter_raw([str(path)], done, on_skip=skipped.append))
    assert [r.id for r in raws] == ["w.xyz:1", "w.xyz:3"] and len(skipped) == 2
