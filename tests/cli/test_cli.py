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


def _subparsers():
    import argparse

    from tensornet_fast.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: p for name, p in sub.choices.items() if name != "bench"}


def test_every_option_has_help_with_its_default_and_units():
    for name, p in _subparsers().items():
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = formatter._get_help_string(action)
            assert text, (name, action.option_strings)
            if action.nargs != 0 and not action.required:  # flags are off by default
                assert "default" in text, (name, action.option_strings, text)
    helps = {name: " ".join(p.format_help().split()) for name, p in _subparsers().items()}
    assert "largest atomic force, in eV/Angstrom" in helps["screen"]
    assert "eV per model energy unit" in helps["energies"]
    assert "Angstrom per model length unit" in helps["screen"]
    assert "stress_eV_per_A3" in helps["energies"] and "eV/Angstrom^3" in helps["energies"]
    assert "OUT.relaxed.extxyz" in helps["screen"]


def test_info_is_a_readable_table(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split(None, 1) for line in out.splitlines() if line and line[0] != " ")
    assert "eV and Angstrom" in rows["units"]
    assert rows["cutoff"].startswith("5 Angstrom")
    assert "," in rows["parameters"] and int(rows["parameters"].replace(",", "")) > 1000
    assert "elements" in rows and "ModelConfig(" not in out
    assert main(["info", "--model", "/nonexistent.ckpt"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_export_never_overwrites_foreign_files_and_prints_stages(tmp_path, monkeypatch, capsys):
    import json
    import zipfile

    import tensornet_fast.md.export as md_export
    from tensornet_fast.cli.export import is_export_package

    foreign = tmp_path / "notes.pt2"
    foreign.write_text("not a package")
    assert main(["export", "--out", str(foreign)]) == 2
    assert foreign.read_text() == "not a package"
    assert "left untouched" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err

    def fake_export(model, out, log=None, **kwargs):  # stands in for minutes of compiling
        log("model loaded; tracing energy and forces (make_fx)")
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr(
                "m/data/aotinductor/model/x_metadata.json",
                json.dumps({"tensornet_fast_export": "1"}),
            )
        log("compiled and packaged")
        return out

    monkeypatch.setattr(md_export, "export_model", fake_export)
    out = tmp_path / "m.pt2"
    for _ in range(2):  # the second run replaces its own package
        assert main(["export", "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert "tracing" in err and "compiled" in err and "wrote" in err
    assert is_export_package(str(out)) and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.pt2",
        "notes.pt2",
    ]


def test_info_elements_line_names_trained_elements_by_symbol():
    """``TensorNetModel.elements`` (atomic numbers the model was trained on, or None) is shown
    by symbol; a stand-in model, so the line is tested before the model side has it."""
    from types import SimpleNamespace

    from tensornet_fast.cli.info import elements_line

    config = SimpleNamespace(max_z=18)
    trained = SimpleNamespace(config=config, elements=(8, 1, 6, 17))
    assert elements_line(trained) == "H C O Cl (trained on; atomic numbers 1..17 accepted)"
    unknown = SimpleNamespace(config=config, elements=None)
    assert elements_line(unknown).startswith("not recorded in the checkpoint")


def test_unusable_device_is_one_message(capsys):
    assert main(["energies", "--device", "gpu0", "--progress", "none"]) == 2
    assert "not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["energies", "--device", "cuda", "--progress", "none"]) == 2
        err = capsys.readouterr().err
        assert "no CUDA device" in err and "Traceback" not in err
