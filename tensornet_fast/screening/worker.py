"""What a screening worker runs: the job's settings (``ScreenSpec``, picklable), the process's
model (loaded once), and a shard of raw records turned into output rows. Local runs and
scale-out workers (``distributed.py``) call the same functions."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .batching import (
    BatchEvaluator,
    RelaxOptions,
    Units,
    columns,
    default_batch_atoms,
    make_batches,
)
from .readers import RawRecord, Record, allowed_species, parse_record


@dataclass(frozen=True)
class ScreenSpec:
    """Everything a worker needs to turn records into rows (picklable, hashable). ``screen``
    and ``energies`` are the same pipeline with different specs: energies takes periodic cells
    (``periodic``), writes forces and stress on request and keeps the input order
    (``ordered``); screen relaxes on request and sorts by size for throughput."""

    model: str = "default"
    device: str = "cpu"
    backend: str = "auto"
    filter_mode: str = "auto"
    precision: int | None = None
    layout: str = "auto"
    batch_atoms: int | None = None
    window: int = 4096
    relax: bool = False
    fmax: float = 0.05  # eV/Angstrom
    max_steps: int = 200
    seed: int = 0
    threads: int | None = None
    forces: bool = False
    stress: bool = False
    periodic: bool = False
    ordered: bool = False
    energy_unit: float = 1.0  # eV per model energy unit
    length_unit: float = 1.0  # Angstrom per model length unit

    @property
    def atoms_per_batch(self) -> int:
        return self.batch_atoms or default_batch_atoms(self.device)

    @property
    def columns(self) -> list[str]:
        return columns(self.relax, self.forces, self.stress)


_MODELS: dict[tuple, torch.nn.Module] = {}
_LOADS = [0]  # models loaded by this process (tests check: once per worker)


def undo_malloc_trim() -> bool:
    """Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; in glibc, setting the
    trim threshold also pins the mmap threshold at 128 KiB, so every large torch temporary is
    mmap'ed, page-faulted and unmapped again: measured 2.5x the CPU time per molecule here. Put
    generous thresholds back (glibc only; a no-op elsewhere). Returns whether it applied."""
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 64 << 20) and libc.mallopt(m_trim_threshold, 512 << 20)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def get_model(spec: ScreenSpec) -> torch.nn.Module:
    """The process's model for ``spec``: loaded once, then reused by every batch and task."""
    key = (spec.model, spec.device, spec.backend, spec.filter_mode, spec.precision, spec.layout)
    model = _MODELS.get(key)
    if model is None:
        from ..model import load_model

        if spec.threads:
            torch.set_num_threads(spec.threads)
        undo_malloc_trim()
        overrides = {} if spec.precision is None else {"precision": spec.precision}
        model = load_model(
            spec.model,
            device=spec.device,
            backend=spec.backend,
            filter_mode=spec.filter_mode,
            layout=spec.layout,
            **overrides,
        )
        _MODELS[key] = model
        _LOADS[0] += 1
    return model


def evaluate_stream(
    records: Iterable[Record], spec: ScreenSpec
) -> Iterator[tuple[list[dict], int]]:
    """(rows, input bytes) per batch."""
    relax = RelaxOptions(spec.fmax, spec.max_steps) if spec.relax else None
    evaluator = BatchEvaluator(
        get_model(spec),
        relax,
        forces=spec.forces,
        stress=spec.stress,
        units=Units(spec.energy_unit, spec.length_unit),
    )
    for group in make_batches(records, spec.atoms_per_batch, spec.window, spec.ordered):
        yield evaluator.rows(group), sum(r.nbytes for r in group)


def process_shard(raws: Sequence[RawRecord], spec: ScreenSpec) -> list[dict]:
    """Worker task: parse, validate, batch and evaluate one shard of raw records."""
    max_z = allowed_species(get_model(spec).config)
    records = [parse_record(r, max_z, spec.seed, spec.periodic) for r in raws]
    rows: list[dict] = []
    for batch_rows, _ in evaluate_stream(records, spec):
        rows.extend(batch_rows)
    return rows
