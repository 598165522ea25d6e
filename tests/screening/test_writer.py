"""File safety of the result writers: inputs are never opened for writing, files that are not
the command's own output are never modified (their bytes are compared), a second run on the same
output is refused, resume repairs only its own files, relaxed geometries are journaled."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from tensornet_fast import InputError
from tensornet_fast.screening.batching import columns
from tensornet_fast.screening.writer import (
    GeometrySink,
    format_value,
    open_sink,
    read_results,
    relaxed_path,
)

COLS = columns()


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def row(k: int, **extra) -> dict:
    return {"id": f"a.xyz:{k}", "n_atoms": 3, "energy_eV": -1.5 * k, "status": "ok", **extra}


def test_output_that_is_an_input_is_refused_untouched(tmp_path):
    inp = tmp_path / "in.xyz"
    inp.write_text("3\n\nO 0 0 0\nH 0 0 1\nH 0 1 0\n")
    before = digest(inp)
    link = tmp_path / "link.csv"
    link.symlink_to(inp)
    hard = tmp_path / "hard.csv"
    os.link(inp, hard)
    for out in (inp, link, hard):
        with pytest.raises(InputError, match="is the input"):
            open_sink(str(out), COLS, inputs=[str(inp)])
    assert digest(inp) == before
    # the relaxed-geometry file beside the table may not be an input either
    geo_input = tmp_path / "r.relaxed.extxyz"
    geo_input.write_text("3\n\nO 0 0 0\nH 0 0 1\nH 0 1 0\n")
    with pytest.raises(InputError, match="is the input"):
        open_sink(str(tmp_path / "r.csv"), COLS, inputs=[str(geo_input)], geometries=True)
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"a,b\n1,2\n3,4",  # another CSV, torn last line: not ours, so not repaired
        b"",  # (empty: nothing to lose, becomes ours)
        b"\x00\x01binary\x00",
        b"id,name,formula,n_atoms,energy_eV,fmax_eV_per_A,status,relax_steps\nx:0,,,1,,,ok,3\n",
    ],
)
def test_foreign_or_mismatched_file_is_never_modified(tmp_path, content):
    out = tmp_path / "other.csv"
    out.write_bytes(content)
    if not content:
        sink = open_sink(str(out), COLS)
        sink.close()
        assert out.read_text().splitlines() == [",".join(COLS)]
        return
    with pytest.raises(InputError) as info:
        open_sink(str(out), COLS)
    assert out.read_bytes() == content
    assert "untouched" in str(info.value) or "same options" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["other.csv"]  # no lock file left


def test_directory_as_csv_output_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        open_sink(str(tmp_path), COLS)


def test_parquet_directory_with_foreign_files_is_refused(tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "res.parquet"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write"):
        open_sink(str(out), COLS)
    assert sorted(os.listdir(out)) == ["notes.txt"]
    file_out = tmp_path / "f.parquet"
    file_out.write_bytes(b"PAR1")
    with pytest.raises(InputError, match="directory dataset"):
        open_sink(str(file_out), COLS)
    assert file_out.read_bytes() == b"PAR1"


def test_foreign_lock_file_is_refused_untouched(tmp_path):
    out = tmp_path / "r.csv"
    lock = tmp_path / "r.csv.lock"
    lock.write_text("my notes about r.csv\n")
    with pytest.raises(InputError, match="not a tensornet-fast lock"):
        open_sink(str(out), COLS)
    assert lock.read_text() == "my notes about r.csv\n" and not out.exists()


def test_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = str(tmp_path / "r.csv")
    first = open_sink(out, COLS)
    with pytest.raises(InputError, match="another run is writing"):
        open_sink(out, COLS)
    first.write([row(0)])
    first.close()
    again = open_sink(out, COLS)
    assert again.n_existing == 1
    again.close()
    assert sorted(os.listdir(tmp_path)) == ["r.csv"]


def test_resume_cuts_a_torn_line_of_its_own_file(tmp_path):
    out = str(tmp_path / "r.csv")
    sink = open_sink(out, COLS)
    sink.write([row(0), row(1)])
    sink.close()
    with open(out, "a") as fh:
        fh.write("a.xyz:2,,,3,-3.0")  # killed mid-write
    again = open_sink(out, COLS)
    assert again.n_existing == 2 and list(again.done["a.xyz"]) == [True, True]
    again.write([row(2)])
    again.close()
    assert [r["id"] for r in read_results(out)] == ["a.xyz:0", "a.xyz:1", "a.xyz:2"]


def test_number_formatting():
    assert format_value(np.float32(-137.95537)) == "-137.95537"
    assert format_value(-137.9553631638492) == "-137.9553631638492"
    assert format_value(np.float64(0.1)) == "0.1"
    assert format_value([np.float32(1.5), np.float32(-2.0)]) == "1.5 -2.0"
    assert format_value(None) == "" and format_value(3) == "3"


def test_stdout_sink(capsys):
    sink = open_sink("-", COLS)
    sink.write([row(1)])
    sink.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [",".join(COLS), "a.xyz:1,,,3,-1.5,,ok"]
    with pytest.raises(InputError, match="--relax needs --out"):
        open_sink("-", COLS, geometries=True)


def test_geometry_journal_resume_and_ownership(tmp_path):
    path = str(tmp_path / "r.relaxed.extxyz")
    assert relaxed_path(str(tmp_path / "r.csv")) == path
    assert relaxed_path(str(tmp_path / "r.parquet")) == path
    z = np.array([8, 1, 1])
    pos = np.array([[0, 0, 0.1], [0, 0.7, -0.4], [0, -0.7, -0.4]])

    def geo_row(k):
        return {
            "id": f"m.sdf:{k}",
            "name": 'odd "name"',
            "relaxed_energy_eV": -1.0 - k,
            "relaxed_fmax_eV_per_A": 0.01,
            "converged": True,
            "_relaxed": (z, pos + k),
        }

    sink = GeometrySink(path)
    sink.write([geo_row(0), geo_row(1)])
    sink.close()
    with open(path, "a") as fh:
        fh.write('3\nProperties=species:S:1:pos:R:3 id="m.sdf:2"\nO 0 0 0\n')  # torn frame
    again = GeometrySink(path)
    assert again.ids == {"m.sdf:0", "m.sdf:1"}
    again.write([geo_row(1), geo_row(2)])  # 1 is there already: not written twice
    again.close()
    ase_io = pytest.importorskip("ase.io")
    frames = ase_io.read(path, ":")
    assert [f.info["id"] for f in frames] == ["m.sdf:0", "m.sdf:1", "m.sdf:2"]
    np.testing.assert_allclose(frames[2].positions, pos + 2)
    assert frames[1].info["energy_eV"] == -2.0
    foreign = tmp_path / "x.extxyz"
    foreign.write_text("3\nsomething else\nO 0 0 0\nH 0 0 1\nH 0 1 0\n")
    before = digest(foreign)
    with pytest.raises(InputError, match="not written by"):
        GeometrySink(str(foreign))
    assert digest(foreign) == before
