"""``tensornet-fast screen``: mixed-format library with broken records, energies vs load_model,
resume after interruption, Parquet, batched FIRE vs ASE's FIRE, Dask and per-device processes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from paths import PACKAGE_DATA

from tensornet_fast import load_model
from tensornet_fast.cli import main as cli_main
from tensornet_fast.screening import ScreenSpec, read_results, screen
from tensornet_fast.screening.readers import hill_formula
from tests.tolerances import assert_close

ase_io = pytest.importorskip("ase.io")
Chem = pytest.importorskip("rdkit.Chem")
from ase import Atoms  # noqa: E402
from rdkit.Chem import AllChem  # noqa: E402

MOLECULES = os.path.join(PACKAGE_DATA, "molecules.xyz")

SDF_SMILES = ["CCO", "c1ccncc1", "CC(=O)Nc1ccc(O)cc1", "CCBr", "OCC(Cl)CS"]  # CCBr: z=35
SMILES_LINES = [
    "smiles name",
    "CCO ethanol",
    "",
    "# comment",
    "C1CC( broken",
    "c1ccccc1O phenol",
    "N#CC(N)=O",
    "[Na+].[Cl-] salt",
]


def _embed(smiles: str, seed: int = 0):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert AllChem.EmbedMolecule(mol, params) == 0
    return mol


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Three files; returns (paths, expected) with expected[id] = (z, pos) or None (bad)."""
    d = tmp_path_factory.mktemp("lib")
    expected: dict[str, tuple | None] = {}
    # --- SDF: 5 molecules, a broken record in the middle, one atom type beyond max_z
    blocks = []
    for k, smi in enumerate(SDF_SMILES):
        mol = _embed(smi, seed=k)
        mol.SetProp("_Name", f"sdf{k}")
        blocks.append(Chem.MolToMolBlock(mol) + "$$$$\n")
    broken = "broken\n  junk\n\n  x  y  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n"
    blocks.insert(2, broken)
    sdf = d / "lib.sdf"
    sdf.write_text("".join(blocks))
    for idx, block in enumerate(blocks):
        mol = Chem.MolFromMolBlock(block, removeHs=False, sanitize=False)
        ok = mol is not None and all(a.GetAtomicNum() < 20 for a in mol.GetAtoms())
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()]) if mol is not None else None
        expected[f"lib.sdf:{idx}"] = (z, mol.GetConformer().GetPositions()) if ok else None
    # --- XYZ: the bundled molecules + unknown element, coincident atoms, z >= max_z, bad count
    frames = ase_io.read(MOLECULES, ":")
    text = open(MOLECULES).read()
    bad_frames = (
        "2\nunknown element\nQq 0 0 0\nH 0 0 1\n"
        "3\ncoincident\nO 0 0 0\nH 0 0 0\nH 0 0.7 0.5\n"
        "2\nbromine\nBr 0 0 0\nH 0 0 1.4\n"
        "two\nnot a count line\nH 0 0 0\n"
    )
    xyz = d / "lib.xyz"
    xyz.write_text(_insert_after_frames(text, 5, bad_frames))
    for idx in range(5):
        expected[f"lib.xyz:{idx}"] = (frames[idx].numbers, frames[idx].positions)
    for idx in range(5, 9):
        expected[f"lib.xyz:{idx}"] = None
    for k, atoms in enumerate(frames[5:]):
        expected[f"lib.xyz:{9 + k}"] = (atoms.numbers, atoms.positions)
    # --- SMILES: header, blank, comment, an invalid SMILES, a salt with Na (z=11)
    smi = d / "lib.smi"
    smi.write_text("\n".join(SMILES_LINES) + "\n")
    records = [line for line in SMILES_LINES[1:] if line.strip() and not line.startswith("#")]
    for idx, line in enumerate(records):
        s = line.split()[0]
        if Chem.MolFromSmiles(s) is None:
            expected[f"lib.smi:{idx}"] = None
        else:
            mol = _embed(s, seed=0)
            pos = mol.GetConformer().GetPositions()
            # ETKDG puts single-atom fragments (the salt's ions) at the origin: coincident
            coincident = len(np.unique(pos, axis=0)) < len(pos)
            expected[f"lib.smi:{idx}"] = (
                None if coincident else (np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), pos)
            )
    return [str(sdf), str(xyz), str(smi)], expected


def _insert_after_frames(text: str, n: int, extra: str) -> str:
    lines = text.splitlines(keepends=True)
    k = 0
    for _ in range(n):
        k += int(lines[k]) + 2
    return "".join(lines[:k]) + extra + "".join(lines[k:])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two shared cores: one torch thread is ~10x faster than two under load."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    return load_model("default")


@pytest.fixture(scope="module")
def reference(library, model):
    """id -> (energy, fmax) from load_model, one molecule at a time."""
    _, expected = library
    ref = {}
    for ident, item in expected.items():
        if item is None:
            continue
        z = torch.as_tensor(np.asarray(item[0]), dtype=torch.long)
        pos = torch.as_tensor(np.asarray(item[1]), dtype=model.dtype)
        e, f = model(z, pos)
        ref[ident] = (e.item(), f.norm(dim=1).max().item())
    return ref


SMALL = dict(batch_atoms=40, window=8)  # many small batches, so resume is exercised


def _by_id(rows):
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    return {r["id"]: r for r in rows}


def _check_rows(rows, library, reference, model):
    _, expected = library
    by_id = _by_id(rows)
    assert set(by_id) == set(expected), set(by_id) ^ set(expected)
    for ident, item in expected.items():
        status = by_id[ident]["status"]
        assert (status == "ok") == (item is not None), (ident, status)
    ok = sorted(reference)
    got_e = torch.tensor([by_id[i]["energy_eV"] for i in ok], dtype=torch.float64)
    ref_e = torch.tensor([reference[i][0] for i in ok], dtype=torch.float64)
    assert_close(got_e, ref_e, model.dtype, "energy", "screen vs load_model")
    got_f = torch.tensor([by_id[i]["fmax_eV_per_A"] for i in ok], dtype=torch.float64)
    ref_f = torch.tensor([reference[i][1] for i in ok], dtype=torch.float64)
    assert_close(got_f, ref_f, model.dtype, "forces", "fmax screen vs load_model")
    for i in ok:
        assert by_id[i]["n_atoms"] == len(expected[i][0])
        assert by_id[i]["formula"] == hill_formula(np.asarray(expected[i][0]))
    return by_id


def test_mixed_library_statuses_and_energies(library, reference, model, tmp_path):
    paths, _ = library
    out = tmp_path / "out.csv"
    stats = screen(paths, str(out), ScreenSpec(**SMALL), progress=False, parse_workers=2)
    assert "2 parser processes" in stats.mode and not stats.interrupted
    assert stats.n_rows == len(library[1])
    by_id = _check_rows(read_results(str(out)), library, reference, model)
    assert by_id["lib.sdf:2"]["status"].startswith("error: unparsable SDF")
    assert "35" in by_id["lib.sdf:4"]["status"]  # CCBr: z=35 >= max_z
    assert "unknown element" in by_id["lib.xyz:5"]["status"]
    assert "coincident" in by_id["lib.xyz:6"]["status"]
    assert "count line" in by_id["lib.xyz:8"]["status"]
    assert "invalid SMILES" in by_id["lib.smi:1"]["status"]
    assert "coincident" in by_id["lib.smi:4"]["status"]  # [Na+].[Cl-]: both ions at 0,0,0
    assert by_id["lib.sdf:0"]["name"] == "sdf0" and by_id["lib.smi:2"]["name"] == "phenol"
    assert stats.n_failed == sum(1 for v in library[1].values() if v is None)


def test_poisoned_batch_falls_back_per_record(model):
    """A record that passes the per-record checks but fails in the model (coincident only in
    float32) is isolated; its batch mates still get their energies."""
    from tensornet_fast.screening.batching import BatchEvaluator
    from tensornet_fast.screening.readers import Record

    frames = ase_io.read(MOLECULES, ":4")
    recs = [
        Record(f"m:{k}", "", a.numbers.astype(np.int64), a.positions.copy())
        for k, a in enumerate(frames)
    ]
    pos = recs[2].pos
    pos[0] = pos[1] + 1e-12  # distinct in float64, identical in float32 (|pos[1]| ~ 0.6)
    rows = BatchEvaluator(model).rows(recs)
    assert [r["status"] == "ok" for r in rows] == [True, True, False, True]
    assert "coincide" in rows[2]["status"]
    ok = [k for k, r in enumerate(rows) if r["status"] == "ok"]
    got = torch.tensor([rows[k]["energy_eV"] for k in ok], dtype=torch.float64)
    ref = torch.cat(
        [
            model(
                torch.as_tensor(frames[k].numbers),
                torch.as_tensor(frames[k].positions, dtype=model.dtype),
            )[0].reshape(1)
            for k in ok
        ]
    ).double()
    assert_close(got, ref, model.dtype, "energy", "batch mates of a poisoned record")


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_resume_after_interrupt(library, reference, model, tmp_path, suffix):
    paths, expected = library
    out = str(tmp_path / f"out.{suffix}")

    def stop_after(k):
        def hook(n):
            if n == k:
                raise KeyboardInterrupt

        return hook

    def interrupted_run(k):
        with pytest.raises(KeyboardInterrupt):
            screen(
                paths,
                out,
                ScreenSpec(**SMALL),
                progress=False,
                rows_per_part=7,
                parse_workers=0,
                on_write=stop_after(k),
            )

    interrupted_run(3)
    partial = read_results(out)
    assert 0 < len(partial) < len(expected)
    _by_id(partial)
    interrupted_run(2)  # a second interruption, on the resumed run
    middle = read_results(out)
    assert len(partial) < len(middle) < len(expected)
    if suffix == "csv":  # a hard kill mid-write leaves a torn line: resume cuts it off
        with open(out, "a") as fh:
            fh.write("lib.smi:99,torn")
    stats = screen(
        paths, out, ScreenSpec(**SMALL), progress=False, rows_per_part=7, parse_workers=0
    )
    assert stats.n_existing == len(middle)
    assert stats.n_rows == len(expected) - len(middle)
    _check_rows(read_results(out), library, reference, model)
    again = screen(paths, out, ScreenSpec(**SMALL), progress=False)  # nothing left to do
    assert again.n_rows == 0 and again.n_existing == len(expected)
    if suffix == "parquet":
        import pyarrow.dataset as ds

        assert os.path.isdir(out) and not os.path.exists(os.path.join(out, "_pending.csv"))
        assert ds.dataset(out, format="parquet").count_rows() == len(expected)


def test_relax_matches_ase_fire(model, tmp_path):
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import FIRE

    class Calc(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            e, f = model(
                torch.as_tensor(self.atoms.numbers),
                torch.as_tensor(self.atoms.positions, dtype=model.dtype),
            )
            self.results = {"energy": e.item(), "forces": f.double().numpy()}

    frames = ase_io.read(MOLECULES, ":")[:5]
    path = tmp_path / "six.xyz"
    ase_io.write(str(path), frames, format="xyz")
    out = str(tmp_path / "relax.csv")
    spec = ScreenSpec(batch_atoms=1000, relax=True, fmax=0.05, max_steps=25)
    screen([str(path)], out, spec, progress=False)
    rows = _by_id(read_results(out))
    for k, atoms in enumerate(frames):
        row = rows[f"six.xyz:{k}"]
        assert row["status"] == "ok"
        assert row["relaxed_energy_eV"] <= row["energy_eV"] + 1e-6
        a = Atoms(atoms.numbers, atoms.positions)
        a.calc = Calc()
        opt = FIRE(a, logfile=None)
        converged = opt.run(fmax=0.05, steps=25)
        assert row["converged"] == bool(converged)
        assert abs(row["relax_steps"] - opt.nsteps) <= 1, (row["relax_steps"], opt.nsteps)
        assert row["relaxed_energy_eV"] == pytest.approx(
            a.get_potential_energy(), rel=1e-4, abs=1e-4
        )
    assert any(rows[f"six.xyz:{k}"]["relax_steps"] > 0 for k in range(5))


def test_dask_cluster_interrupt_and_resume(library, reference, model, tmp_path):
    """--scheduler mode on a loopback LocalCluster (2 worker processes): an interrupted run and
    its resumption together give every row once, equal to load_model's numbers."""
    distributed = pytest.importorskip("distributed")
    paths, expected = library
    out = str(tmp_path / "dask.csv")
    spec = ScreenSpec(**SMALL, threads=1)

    def stop(n):
        if n == 2:
            raise KeyboardInterrupt

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        with pytest.raises(KeyboardInterrupt):
            screen(paths, out, spec, scheduler=address, shard_size=4, progress=False, on_write=stop)
        n_partial = len(read_results(out))
        assert 0 < n_partial < len(expected)
        stats = screen(paths, out, spec, scheduler=address, shard_size=6, progress=False)
        with distributed.Client(address) as client:  # one long-lived model per worker
            loads = client.run(
                lambda: __import__("tensornet_fast.screening.worker", fromlist=["_LOADS"])._LOADS[0]
            )
        assert len(loads) == 2 and all(n == 1 for n in loads.values()), loads
    assert stats.mode.startswith("dask") and stats.n_existing == n_partial
    _check_rows(read_results(out), library, reference, model)


def test_per_device_processes_and_cli(library, reference, model, tmp_path, capsys):
    """The no-scheduler mode (one process per device) via the CLI, with devices cpu,cpu."""
    paths, _ = library
    out = str(tmp_path / "dev.parquet")
    rc = cli_main(
        [
            "screen",
            *paths,
            "--out",
            out,
            "--devices",
            "cpu,cpu",
            "--shard-size",
            "5",
            "--batch-atoms",
            "40",
            "--threads",
            "1",
            "--progress",
            "none",
        ]
    )
    assert rc == 0
    assert "structures/s" in capsys.readouterr().err
    _check_rows(read_results(out), library, reference, model)


@pytest.mark.parametrize("name", ["o.csv", "o.parquet"])
def test_output_locked_against_concurrent_runs(tmp_path, name):
    from tensornet_fast.screening.writer import open_sink

    path = str(tmp_path / name)
    first = open_sink(path, ["id", "status"])
    with pytest.raises(ValueError, match="another run is writing"):
        open_sink(path, ["id", "status"])
    first.write([{"id": "a.xyz:0", "status": "ok"}])
    first.close()
    again = open_sink(path, ["id", "status"])  # released on close; resume sees the row
    assert again.n_existing == 1 and bool(again.done["a.xyz"][0])
    again.close()
    assert sorted(os.listdir(tmp_path)) == [name]  # no lock file left behind


def test_total_charge_reaches_charge_models(tmp_path):
    """Models trained with total charges get each molecule's formal charge (RDKit)."""
    oracle = pytest.importorskip("tests.oracle")
    ckpt = oracle.make_checkpoint(tmp_path / "q.ckpt", seed=3, charge=True)
    charged = load_model(ckpt)
    cases = [("C[NH3+]", 1), ("CC(=O)[O-]", -1), ("CCO", 0)]
    smi = tmp_path / "ions.smi"
    smi.write_text("".join(f"{s} m{k}\n" for k, (s, _) in enumerate(cases)))
    out = str(tmp_path / "ions.csv")
    screen([str(smi)], out, ScreenSpec(model=str(ckpt)), progress=False, parse_workers=0)
    rows = _by_id(read_results(out))
    got, ref = [], []
    for k, (s, q) in enumerate(cases):
        mol = _embed(s)
        z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()])
        pos = torch.as_tensor(mol.GetConformer().GetPositions(), dtype=charged.dtype)
        e, _ = charged(z, pos, q=torch.tensor([float(q)]))
        if q:
            assert abs(e.item() - charged(z, pos)[0].item()) > 1e-4  # the charge matters
        got.append(rows[f"ions.smi:{k}"]["energy_eV"])
        ref.append(e.item())
    assert_close(
        torch.tensor(got, dtype=torch.float64),
        torch.tensor(ref, dtype=torch.float64),
        charged.dtype,
        "energy",
        "charged molecules",
    )


def test_batches_respect_budget_and_sort_by_size():
    from tensornet_fast.screening.batching import make_batches
    from tensornet_fast.screening.readers import Record

    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 30, size=200)
    recs = [
        Record(
            f"r:{k}",
            "",
            np.ones(n, np.int64),
            np.zeros((n, 3)),
            error="error: bad" if k % 17 == 0 else None,
        )
        for k, n in enumerate(sizes)
    ]
    groups = list(make_batches(recs, batch_atoms=64, window=50))
    flat = [r.id for g in groups for r in g]
    assert sorted(flat) == sorted(r.id for r in recs)  # every record exactly once
    for g in groups:
        good = [r.n_atoms for r in g if r.ok]
        assert good == sorted(good)
        assert sum(good) <= 64 or len(good) == 1
    # greedy packing: a batch closes only when the next molecule does not fit, so all but the
    # last batch of each window hold more than 64 - 29 atoms
    n_windows_max = 200 // 50 + int(sum(sizes)) // (8 * 64) + 1
    underfull = [g for g in groups if sum(r.n_atoms for r in g if r.ok) <= 64 - 29]
    assert len(underfull) <= n_windows_max


def test_same_input_twice_is_refused(library, tmp_path):
    with pytest.raises(ValueError, match="more than once"):
        screen([library[0][0], library[0][0]], str(tmp_path / "x.csv"), progress=False)


def test_progress_log_lines_and_bar():
    import io

    from tensornet_fast.screening.progress import Progress

    log = io.StringIO()
    prog = Progress(1000, "auto", log_every=0.0, stream=log)  # not a terminal: log lines
    prog.update([{"status": "ok"}] * 3 + [{"status": "error: x"}], 500)
    prog.close()
    line = log.getvalue()
    assert "4 structures (1 failed)" in line and "structures/s" in line and "50.0% of input" in line
    bar_out = io.StringIO()
    bar = Progress(1000, "bar", stream=bar_out)
    bar.update([{"status": "ok"}] * 2, 1000)
    bar.close()
    assert "100%" in bar_out.getvalue() and "per_s" in bar_out.getvalue()


def test_parquet_journal_survives_a_hard_kill(tmp_path):
    """Rows only in the journal (process killed before a part was written) become a part on
    reopening; rows both in a part and the journal (killed between the two) are not doubled."""
    from tensornet_fast.screening.writer import ParquetSink

    path = str(tmp_path / "k.parquet")
    cols = ["id", "energy_eV", "status"]
    sink = ParquetSink(path, cols, rows_per_part=3)
    sink.write([{"id": f"a.xyz:{k}", "energy_eV": float(k), "status": "ok"} for k in range(4)])
    sink.write([{"id": "a.xyz:4", "energy_eV": 4.0, "status": "ok"}])
    sink._journal.close()  # "killed": no close(); part 1 holds 0-3, the journal holds 4
    with open(sink.journal_path, "a") as fh:  # and a torn line from the kill
        fh.write("a.xyz:5,5.0")
    sink._write_part([{"id": "a.xyz:4", "energy_eV": 4.0, "status": "ok"}])  # killed after a part
    again = ParquetSink(path, cols)
    assert again.n_existing == 5
    again.close()
    rows = read_results(path)
    assert sorted(r["id"] for r in rows) == [f"a.xyz:{k}" for k in range(5)]
