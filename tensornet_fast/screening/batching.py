"""Dynamic batching by an atom budget, and the evaluation of one batch into output rows.

Records are packed greedily up to ``batch_atoms`` atoms (a structure larger than the budget runs
alone); a batch never mixes periodic and isolated structures. Unordered (screen), records are
first sorted by size inside a window so that similar molecules share a batch (relaxations of
similar molecules finish together); ordered (energies), batches are runs of consecutive records,
so rows come out in input order. Records that failed to parse or validate never enter the model;
they become rows with an ``error: ...`` status. If a batch still fails (an input the per-record
checks missed, a device out-of-memory), it is split in halves until the failing record is alone,
so one bad record never poisons its batch.

Output columns carry their units (the model's energies and lengths converted with
``energy_unit`` eV and ``length_unit`` Angstrom per model unit; 1 and 1 for models trained in
eV and Angstrom, such as the bundled one).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DomainWarning
from .domain import domain_status
from .readers import Record, hill_formula, short_error
from .relax import fire_relax
from .tensors import concat_records, per_molecule_fmax

BASE_COLUMNS = ["id", "name", "formula", "n_atoms", "energy_eV", "fmax_eV_per_A", "status"]
FORCES_COLUMN = "forces_eV_per_A"
STRESS_COLUMN = "stress_eV_per_A3"
RELAX_COLUMNS = ["relaxed_energy_eV", "relaxed_fmax_eV_per_A", "relax_steps", "converged"]
# column -> unit (Parquet field metadata, docs/cli.md); columns not listed have no unit
UNITS = {
    "energy_eV": "eV",
    "fmax_eV_per_A": "eV/Angstrom",
    FORCES_COLUMN: "eV/Angstrom",
    STRESS_COLUMN: "eV/Angstrom^3",
    "relaxed_energy_eV": "eV",
    "relaxed_fmax_eV_per_A": "eV/Angstrom",
}
# columns holding several numbers, written space-separated in CSV and as lists in Parquet
LIST_COLUMNS = (FORCES_COLUMN, STRESS_COLUMN)


def columns(relax: bool = False, forces: bool = False, stress: bool = False) -> list[str]:
    return (
        BASE_COLUMNS
        + ([FORCES_COLUMN] if forces else [])
        + ([STRESS_COLUMN] if stress else [])
        + (RELAX_COLUMNS if relax else [])
    )


def default_batch_atoms(device: str | torch.device) -> int:
    """Measured on CPU (reference backend): 512-1024 atoms is fastest, larger batches fall out of
    cache. On CUDA a batch of 16k drug-like atoms holds a few GB of autograd state."""
    return 16384 if torch.device(device).type == "cuda" else 1024


def make_batches(
    records: Iterable[Record], batch_atoms: int, window: int, ordered: bool = False
) -> Iterator[list[Record]]:
    """Group a record stream into batches; every record comes out exactly once.

    ``ordered``: runs of consecutive records (failed records in place), so rows keep the input
    order. Otherwise records are sorted by size inside a window of at most ``window`` records
    or ``8 * batch_atoms`` atoms (so the first results come quickly even when parsing is slow),
    then packed; failed records ride along with the first batch of their window."""
    if ordered:
        yield from _consecutive(records, batch_atoms)
        return
    buf: list[Record] = []
    atoms = 0
    for rec in records:
        buf.append(rec)
        atoms += rec.n_atoms
        if len(buf) >= window or atoms >= 8 * batch_atoms:
            yield from _pack(buf, batch_atoms)
            buf, atoms = [], 0
    if buf:
        yield from _pack(buf, batch_atoms)


def _consecutive(records: Iterable[Record], budget: int) -> Iterator[list[Record]]:
    cur: list[Record] = []
    n = 0
    periodic: bool | None = None
    for r in records:
        size = r.n_atoms if r.ok else 0
        kind = r.periodic if r.ok else periodic
        if cur and ((n + size > budget and n > 0) or (periodic is not None and kind != periodic)):
            yield cur
            cur, n, periodic = [], 0, None
        cur.append(r)
        n += size
        if r.ok:
            periodic = r.periodic
    if cur:
        yield cur


def _pack(buf: list[Record], budget: int) -> Iterator[list[Record]]:
    bad = [r for r in buf if not r.ok]
    groups: list[list[Record]] = []
    for periodic in (False, True):
        good = sorted((r for r in buf if r.ok and r.periodic == periodic), key=lambda r: r.n_atoms)
        cur: list[Record] = []
        n = 0
        for r in good:
            if cur and n + r.n_atoms > budget:
                groups.append(cur)
                cur, n = [], 0
            cur.append(r)
            n += r.n_atoms
        if cur:
            groups.append(cur)
    if bad:
        if groups:
            groups[0] = bad + groups[0]
        else:
            groups = [bad]
    yield from groups


@dataclass
class RelaxOptions:
    fmax: float = 0.05  # eV/Angstrom
    max_steps: int = 200


@dataclass
class Units:
    """eV per model energy unit and Angstrom per model length unit."""

    energy: float = 1.0
    length: float = 1.0


@dataclass
class SinglePoint:
    energy: float  # eV
    fmax: float  # eV/Angstrom
    forces: np.ndarray | None = None  # [n, 3] eV/Angstrom
    stress: np.ndarray | None = None  # [6] eV/Angstrom^3, Voigt xx yy zz yz xz xy


def single_point(
    model: torch.nn.Module,
    recs: list[Record],
    units: Units = Units(),  # noqa: B008 - a plain value object, never mutated
    forces: bool = False,
    stress: bool = False,
) -> list[SinglePoint]:
    """Energy, largest force and, on request, forces and stress per record: one model call."""
    z, pos, batch, q, box = concat_records(model, recs, units.length)
    want_stress = stress and box is not None
    with warnings.catch_warnings():  # each record's status column says it (domain.py)
        warnings.simplefilter("ignore", DomainWarning)
        out = model.compute(z, pos, batch, box=box, q=q, forces=True, stress=want_stress)
    e_unit, f_unit = units.energy, units.energy / units.length
    energy = out["energy"].detach().reshape(-1).double().cpu() * e_unit
    f = out["forces"].detach().double() * f_unit
    fmax = per_molecule_fmax(f, batch, len(recs)).cpu()
    per_record = torch.split(f.cpu(), [r.n_atoms for r in recs]) if forces else None
    sigma = None
    if want_stress:  # (1/V) dE/d(strain): energy / volume
        sigma = out["stress"].detach().double().cpu() * (e_unit / units.length**3)
        sigma = sigma.reshape(-1, 9)[:, [0, 4, 8, 5, 2, 1]]
    return [
        SinglePoint(
            float(energy[k]),
            float(fmax[k]),
            None if per_record is None else per_record[k].numpy(),
            None if sigma is None else sigma[k].numpy(),
        )
        for k in range(len(recs))
    ]


def _split_eval(fn, recs: list[Record], out: dict[str, object]) -> None:
    """out[id] = fn's result for that record, or an error string; halves on failure."""
    try:
        for r, res in zip(recs, fn(recs)):
            out[r.id] = res
    except Exception as exc:  # InputError, OOM, ...: isolate the culprit
        if recs and recs[0].z is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(recs) == 1:
            out[recs[0].id] = short_error(exc)
            return
        half = len(recs) // 2
        _split_eval(fn, recs[:half], out)
        _split_eval(fn, recs[half:], out)


def _numbers(values: np.ndarray, real: type) -> list:
    return [real(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


class BatchEvaluator:
    """Turns a batch of records into output rows (single point, optionally forces, stress and a
    FIRE relaxation). A relaxed row carries ``_relaxed`` = (z, positions [n, 3] Angstrom) for
    the geometry file; writers ignore keys that are not columns."""

    def __init__(
        self,
        model: torch.nn.Module,
        relax: RelaxOptions | None = None,
        *,
        forces: bool = False,
        stress: bool = False,
        units: Units | None = None,
    ):
        self.model = model
        self.relax = relax
        self.forces, self.stress = forces, stress
        self.units = units or Units()
        self.columns = columns(relax is not None, forces, stress)
        # float32 models give float32 numbers: np.float32 values are written with the digits
        # that identify a float32 (-137.95537), not the 17 of a double (-137.9553680419922)
        self.real = np.float32 if model.dtype == torch.float32 else float

    def rows(self, group: list[Record]) -> list[dict]:
        good = [r for r in group if r.ok]
        sp: dict[str, object] = {}
        rel: dict[str, object] = {}
        units = self.units
        with torch.no_grad():
            if good:
                _split_eval(
                    lambda rs: single_point(self.model, rs, units, self.forces, self.stress),
                    good,
                    sp,
                )
            if self.relax is not None:
                fine = [r for r in good if isinstance(sp.get(r.id), SinglePoint)]
                if fine:
                    opts = self.relax

                    def relax(rs: list[Record]) -> list:
                        return fire_relax(
                            self.model,
                            rs,
                            opts.fmax,
                            opts.max_steps,
                            energy_unit=units.energy,
                            length_unit=units.length,
                        )

                    _split_eval(relax, fine, rel)
        rows = []
        for r in group:
            row: dict = {c: None for c in self.columns}
            row.update(id=r.id, name=r.name, formula=hill_formula(r.z), n_atoms=r.n_atoms)
            res = sp.get(r.id) if r.ok else r.error
            if isinstance(res, SinglePoint):
                real = self.real
                row.update(energy_eV=real(res.energy), fmax_eV_per_A=real(res.fmax))
                row["status"] = domain_status(self.model, r)
                if self.forces:
                    row[FORCES_COLUMN] = _numbers(res.forces, real)
                if self.stress and res.stress is not None:
                    row[STRESS_COLUMN] = _numbers(res.stress, real)
                rres = rel.get(r.id)
                if isinstance(rres, tuple):
                    row.update(
                        relaxed_energy_eV=real(rres[0]),
                        relaxed_fmax_eV_per_A=real(rres[1]),
                        relax_steps=rres[2],
                        converged=bool(rres[3]),
                    )
                    row["_relaxed"] = (r.z, rres[4])
                elif isinstance(rres, str):
                    row["status"] = "relax " + rres
            else:
                row["status"] = res if isinstance(res, str) else short_error(res)
            rows.append(row)
        return rows
