"""Dynamic batching by an atom budget, and the evaluation of one batch into output rows.

Records are sorted by size inside a window so that similar molecules share a batch, then packed
greedily up to ``batch_atoms`` atoms (a molecule larger than the budget runs alone). Records that
failed to parse or validate never enter a batch; they become rows with a non-``ok`` status.
If a batch still fails (an input the per-record checks missed, a device out-of-memory), it is
split in halves until the failing record is alone, so one bad record never poisons its batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from .readers import Record, hill_formula, short_error
from .relax import fire_relax
from .tensors import concat_records, per_molecule_fmax

BASE_COLUMNS = ["id", "name", "formula", "n_atoms", "energy", "fmax", "status"]
RELAX_COLUMNS = ["relaxed_energy", "relaxed_fmax", "relax_steps", "converged"]


def columns(relax: bool) -> list[str]:
    return BASE_COLUMNS + (RELAX_COLUMNS if relax else [])


def default_batch_atoms(device: str | torch.device) -> int:
    """Measured on CPU (reference backend): 512-1024 atoms is fastest, larger batches fall out of
    cache. On CUDA a batch of 16k drug-like atoms holds a few GB of autograd state."""
    return 16384 if torch.device(device).type == "cuda" else 1024


def make_batches(
    records: Iterable[Record], batch_atoms: int, window: int
) -> Iterator[list[Record]]:
    """Group a record stream into batches. Records are sorted by size inside a window of at most
    ``window`` records or ``8 * batch_atoms`` atoms (so the first results come quickly even when
    parsing is slow), then packed up to ``batch_atoms``. Every record comes out exactly once;
    failed records ride along with the first batch of their window."""
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


def _pack(buf: list[Record], budget: int) -> Iterator[list[Record]]:
    bad = [r for r in buf if not r.ok]
    good = sorted((r for r in buf if r.ok), key=lambda r: r.n_atoms)
    groups: list[list[Record]] = []
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
    fmax: float = 0.05
    max_steps: int = 200


def single_point(model: torch.nn.Module, recs: list[Record]) -> list[tuple[float, float]]:
    """(energy, fmax) per record, one batched model call."""
    z, pos, batch, q = concat_records(model, recs)
    energy, forces = model(z, pos, batch, q=q)
    fmax = per_molecule_fmax(forces, batch, len(recs))
    return list(
        zip(energy.detach().reshape(-1).double().cpu().tolist(), fmax.double().cpu().tolist())
    )


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


class BatchEvaluator:
    """Turns a batch of records into output rows (single point, optionally a FIRE relaxation)."""

    def __init__(self, model: torch.nn.Module, relax: RelaxOptions | None = None):
        self.model = model
        self.relax = relax
        self.columns = columns(relax is not None)

    def rows(self, group: list[Record]) -> list[dict]:
        good = [r for r in group if r.ok]
        sp: dict[str, object] = {}
        rel: dict[str, object] = {}
        with torch.no_grad():
            if good:
                _split_eval(lambda rs: single_point(self.model, rs), good, sp)
            if self.relax is not None:
                fine = [r for r in good if not isinstance(sp.get(r.id), str)]
                if fine:
                    opts = self.relax
                    _split_eval(
                        lambda rs: fire_relax(self.model, rs, opts.fmax, opts.max_steps), fine, rel
                    )
        rows = []
        for r in group:
            row = {c: None for c in self.columns}
            row.update(id=r.id, name=r.name, formula=hill_formula(r.z), n_atoms=r.n_atoms)
            res = sp.get(r.id) if r.ok else r.error
            if isinstance(res, tuple):
                row.update(energy=res[0], fmax=res[1], status="ok")
                rres = rel.get(r.id)
                if isinstance(rres, tuple):
                    row.update(
                        relaxed_energy=rres[0],
                        relaxed_fmax=rres[1],
                        relax_steps=rres[2],
                        converged=bool(rres[3]),
                    )
                elif isinstance(rres, str):
                    row["status"] = "relax " + rres
            else:
                row["status"] = res
            rows.append(row)
        return rows
