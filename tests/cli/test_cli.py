"""The console script: --help texts and the quick-start job on the bundled input."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import torch
from ase.io import read
from tolerances import TOLERANCES

import tensornet_fast as tnf
from tensornet_fast.cli import DEFAULT_MOLECULES, main


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "tensornet_fast.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "energies" in out and "info" in out
    out = subprocess.run(
        [sys.executable, "-m", "tensornet_fast.cli", "energies", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--model" in out and "--out" in out
    out = subprocess.run(
        [sys.executable, "-m", "tensornet_fast.cli", "export", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--periodic" in out and "--images" in out and "without Python" in out


def test_energies_on_bundled_molecules_match_load_model(tmp_path):
    out = tmp_path / "e.csv"
    assert main(["energies", "--out", str(out), "--precision", "64"]) == 0
    rows = list(csv.DictReader(open(out)))
    frames = read(DEFAULT_MOLECULES, index=":")
    assert len(rows) == len(frames) >= 10
    model = tnf.load_model("default", precision=64)
    for row, atoms in zip(rows, frames):
        assert row["status"] == "ok"
        e, f = model(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions))
        assert abs(float(row["energy_eV"]) - e.item()) <= 1e-9 * max(1.0, abs(e.item()))
        assert abs(float(row["fmax_eV_per_A"]) - f.norm(dim=1).max().item()) <= 1e-5


def test_filter_mode_option(tmp_path):
    """--filter-mode reaches load_model: the float32 default (auto) is the tabulated path,
    bitwise; exact differs from it by float32 rounding only."""
    rows = {}
    for mode in ("auto", "tabulated", "exact"):
        out = tmp_path / f"{mode}.csv"
        assert main(["energies", "--out", str(out), "--filter-mode", mode, "--forces"]) == 0
        rows[mode] = list(csv.DictReader(open(out)))
    assert rows["auto"] == rows["tabulated"]
    assert rows["auto"] != rows["exact"]  # two different paths ran
    tol = TOLERANCES[torch.float32]
    for key, bound in (("energy_eV", tol["energy"]), ("fmax_eV_per_A", tol["forces"])):
        tab, exact = (
            torch.tensor([float(r[key]) for r in rows[m]], dtype=torch.float64)
            for m in ("auto", "exact")
        )
        assert ((tab - exact).abs() / exact.abs().max()).max() < bound, key


def test_bad_structure_is_reported_and_the_rest_continues(tmp_path, capsys):
    frames = read(DEFAULT_MOLECULES, index=":3")
    frames[1].positions[1] = frames[1].positions[0]  # coincident atoms
    path = tmp_path / "mixed.xyz"
    from ase.io import write

    write(path, frames, format="extxyz")
    assert main(["energies", str(path)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["status"] for r in rows][0::2] == ["ok", "ok"]
    assert rows[1]["status"].startswith("error:") and "coincide" in rows[1]["status"]


def test_info(capsys):
    assert main(["info"]) == 0
    assert "parameters" in capsys.readouterr().out
