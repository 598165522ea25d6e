"""Batches and rows: energies' ordered batches keep the input order and never mix periodic and
isolated structures; the one place rows learn about the training domain; relaxed geometries
written beside the table match the relaxed energies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from paths import PACKAGE_DATA

import tensornet_fast as tnf
from tensornet_fast.screening import ScreenSpec, read_results, screen
from tensornet_fast.screening.batching import BatchEvaluator, make_batches
from tensornet_fast.screening.readers import Record
from tensornet_fast.screening.writer import relaxed_path

MOLECULES = f"{PACKAGE_DATA}/molecules.xyz"


@pytest.fixture(scope="module")
def model():
    return tnf.load_model("default")


def rec(k: int, n: int, periodic: bool = False, ok: bool = True) -> Record:
    cell = np.eye(3) * 10 if periodic else None
    return Record(
        f"f:{k}",
        "",
        np.ones(n, np.int64),
        np.arange(3 * n, dtype=float).reshape(n, 3),
        error=None if ok else "error: bad",
        cell=cell,
    )


def test_ordered_batches_keep_input_order_and_split_periodicity():
    recs = [rec(0, 5), rec(1, 5, ok=False), rec(2, 5), rec(3, 4, periodic=True), rec(4, 4, True)]
    recs += [rec(5, 20), rec(6, 3), rec(7, 3)]
    groups = list(make_batches(recs, batch_atoms=12, window=100, ordered=True))
    assert [r.id for g in groups for r in g] == [r.id for r in recs]
    for g in groups:
        kinds = {r.periodic for r in g if r.ok}
        assert len(kinds) <= 1  # never a mixed batch
        good = sum(r.n_atoms for r in g if r.ok)
        assert good <= 12 or sum(r.ok for r in g) == 1
    unordered = list(make_batches(recs, batch_atoms=12, window=100))
    assert all(len({r.periodic for r in g if r.ok}) <= 1 for g in unordered)
    assert sorted(r.id for g in unordered for r in g) == sorted(r.id for r in recs)


def test_domain_issues_are_shown_in_status(model, monkeypatch):
    """Rows ask ``model.domain_issues(z, q)`` (the model's API) and keep their numbers: the
    status reads ``ok; <issue>`` and counts as computed, not failed."""
    ase_io = pytest.importorskip("ase.io")
    frames = ase_io.read(MOLECULES, ":3")
    recs = [
        Record(f"m:{k}", "", a.numbers.astype(np.int64), a.positions.copy())
        for k, a in enumerate(frames)
    ]
    recs[2].charge = 1.0
    seen = []

    def issues(z, q=None):
        seen.append((torch.as_tensor(z).tolist(), None if q is None else q.tolist()))
        out = ["outside training domain: N"] if 7 in torch.as_tensor(z).tolist() else []
        return out + (["total charge 1 given to a model trained without charges"] if q else [])

    monkeypatch.setattr(model, "domain_issues", issues, raising=False)
    rows = BatchEvaluator(model).rows(recs)
    assert rows[0]["status"] == "ok"  # water
    assert rows[1]["status"] == "ok; outside training domain: N"  # ammonia
    assert rows[2]["status"] == "ok; total charge 1 given to a model trained without charges"
    assert all(r["energy_eV"] is not None for r in rows)
    assert seen[2] == (frames[2].numbers.tolist(), [1.0])

    from tensornet_fast.screening.progress import Progress

    prog = Progress(1, "none")
    prog.update(rows, 1)
    assert prog.n_failed == 0 and prog.n_warned == 2


def test_relaxed_geometries_beside_the_table(tmp_path, model):
    """screen --relax writes OUT.relaxed.extxyz; the model's energy at each saved geometry is
    the row's relaxed_energy_eV, and a resumed run adds each geometry once."""
    ase_io = pytest.importorskip("ase.io")
    frames = ase_io.read(MOLECULES, ":4")
    path = tmp_path / "four.xyz"
    ase_io.write(str(path), frames, format="xyz")
    out = str(tmp_path / "r.csv")
    spec = ScreenSpec(batch_atoms=12, relax=True, max_steps=8, window=2)

    def stop(k):
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        screen([str(path)], out, spec, progress=False, on_write=stop)
    screen([str(path)], out, spec, progress=False)
    rows = {r["id"]: r for r in read_results(out)}
    geo = ase_io.read(relaxed_path(out), ":")
    assert sorted(a.info["id"] for a in geo) == sorted(rows) == [f"four.xyz:{k}" for k in range(4)]
    for atoms in geo:
        row = rows[atoms.info["id"]]
        assert row["relax_steps"] > 0 and row["relaxed_energy_eV"] < row["energy_eV"]
        e, _ = model(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions).float())
        assert e.item() == pytest.approx(row["relaxed_energy_eV"], rel=1e-6, abs=1e-5)
        assert atoms.info["energy_eV"] == pytest.approx(row["relaxed_energy_eV"], rel=1e-6)
