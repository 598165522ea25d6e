"""Streaming readers for molecule libraries: SDF, (ext)XYZ and SMILES files.

Reading happens in two stages so that the expensive part can run anywhere:

1. :func:`iter_raw` frames a file into :class:`RawRecord` text chunks (one per record) in a single
   pass over the text -- cheap, no RDKit, no ASE -- and never holds more than one record.
2. :func:`parse_record` turns a chunk into a :class:`Record` (atomic numbers, positions, or an
   error). For SMILES this generates a 3D conformer with RDKit ETKDG (hydrogens added, seeded).

A record's id is ``"<file key>:<index>"`` where the index counts every record of the file, broken
ones included, so ids are stable between runs (resume) and between single-process and distributed
runs. The file key is the basename unless two inputs share one, then the path as given.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

SDF_SUFFIXES = (".sdf", ".sd", ".mol")
XYZ_SUFFIXES = (".xyz", ".extxyz")
SMILES_SUFFIXES = (".smi", ".smiles", ".txt")
_SMILES_HEADERS = {"smiles", "smi", "canonical_smiles", "isomeric_smiles"}
_MAX_ERROR = 160


@dataclass
class RawRecord:
    key: str  # file key (basename or path)
    index: int  # record index inside the file
    fmt: str  # "sdf" | "xyz" | "smiles"
    text: str  # the record's text; "" when framing already failed (see error)
    nbytes: int  # bytes of input this record accounts for (progress)
    error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.key}:{self.index}"


@dataclass
class Record:
    id: str
    name: str
    z: np.ndarray | None  # int64 [n]
    pos: np.ndarray | None  # float64 [n, 3]
    nbytes: int = 0
    error: str | None = None
    charge: int = 0  # total charge (RDKit formal charges, extxyz charge=); used by charge models

    @property
    def n_atoms(self) -> int:
        return 0 if self.z is None else int(self.z.shape[0])

    @property
    def ok(self) -> bool:
        return self.error is None


def short_error(msg: object) -> str:
    """One line, bounded length, prefixed ``error: `` (the ``status`` column)."""
    text = " ".join(str(msg).split())
    if len(text) > _MAX_ERROR:
        text = text[: _MAX_ERROR - 3] + "..."
    return text if text.startswith("error: ") else "error: " + text


def detect_format(path: str) -> str:
    low = path.lower()
    for suffix in (".gz", ".bz2", ".xz"):
        if low.endswith(suffix):
            raise ValueError(f"{path}: compressed inputs are not supported; decompress first")
    if low.endswith(SDF_SUFFIXES):
        return "sdf"
    if low.endswith(XYZ_SUFFIXES):
        return "xyz"
    if low.endswith(SMILES_SUFFIXES):
        return "smiles"
    raise ValueError(
        f"{path}: unknown input format (use .sdf/.sd/.mol, .xyz/.extxyz, or .smi/.smiles/.txt)"
    )


def file_keys(paths: Sequence[str]) -> dict[str, str]:
    """path -> key used in ids: the basename, or the path itself where basenames collide."""
    names = [os.path.basename(p) for p in paths]
    return {p: (n if names.count(n) == 1 else p) for p, n in zip(paths, names)}


# ---------------------------------------------------------------------------------- framing
def _frame_sdf(fh: io.TextIOBase) -> Iterator[tuple[str, int, str | None]]:
    lines: list[str] = []
    nbytes = 0
    for line in fh:
        nbytes += len(line)
        if line.rstrip("\r\n").strip() == "$$$$":
            yield "".join(lines), nbytes, None
            lines, nbytes = [], 0
        else:
            lines.append(line)
    if any(s.strip() for s in lines):
        yield "".join(lines), nbytes, None


def _frame_xyz(fh: io.TextIOBase) -> Iterator[tuple[str, int, str | None]]:
    """Frames of ``count / comment / count atom lines``. A bad count line yields one error record
    and the reader re-synchronises on the next line holding a single integer."""
    pending: str | None = None
    while True:
        line = pending if pending is not None else fh.readline()
        pending = None
        if not line:
            return
        if not line.strip():
            continue  # blank lines between frames
        try:
            n = int(line.split()[0]) if len(line.split()) == 1 else -1
        except ValueError:
            n = -1
        if n < 0:
            nbytes = len(line)
            while True:  # resync: skip to the next plausible count line
                nxt = fh.readline()
                if not nxt:
                    break
                tok = nxt.split()
                if len(tok) == 1 and tok[0].isdigit():
                    pending = nxt
                    break
                nbytes += len(nxt)
            yield "", nbytes, f"unparsable xyz frame (bad atom-count line {line.strip()[:30]!r})"
            continue
        chunk = [line]
        for _ in range(n + 1):
            nxt = fh.readline()
            if not nxt:
                break
            chunk.append(nxt)
        text = "".join(chunk)
        if len(chunk) < n + 2:
            yield text, len(text), f"truncated xyz frame ({len(chunk) - 2} of {n} atom lines)"
            return
        yield text, len(text), None


def _frame_smiles(fh: io.TextIOBase) -> Iterator[tuple[str, int, str | None]]:
    first = True
    carried = 0
    for line in fh:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            carried += len(line)
            continue
        if first and stripped.split()[0].lower() in _SMILES_HEADERS:
            first = False
            carried += len(line)
            continue
        first = False
        yield stripped, carried + len(line), None
        carried = 0


_FRAMERS = {"sdf": _frame_sdf, "xyz": _frame_xyz, "smiles": _frame_smiles}


def iter_raw(
    paths: Sequence[str],
    skip: Mapping[str, np.ndarray] | None = None,
    on_skip: Callable[[int], None] | None = None,
) -> Iterator[RawRecord]:
    """Frame every input file into :class:`RawRecord` chunks, streaming.

    ``skip`` maps a file key to a boolean mask over record indices already done (resume): those
    are not yielded; ``on_skip(nbytes)`` is told about each one so progress stays right."""
    keys = file_keys(paths)
    for path in paths:
        fmt = detect_format(path)
        key = keys[path]
        done = skip.get(key) if skip else None
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            for index, (text, nbytes, error) in enumerate(_FRAMERS[fmt](fh)):
                if done is not None and index < done.shape[0] and done[index]:
                    if on_skip is not None:
                        on_skip(nbytes)
                    continue
                yield RawRecord(key, index, fmt, text, nbytes, error)


def chunked(raws: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    it = iter(raws)
    while chunk := list(islice(it, size)):
        yield chunk


# ---------------------------------------------------------------------------------- parsing
_SYMBOLS: dict[str, int] | None = None


def _symbol_table() -> dict[str, int]:
    global _SYMBOLS
    if _SYMBOLS is None:
        from ase.data import atomic_numbers

        _SYMBOLS = {k.upper(): v for k, v in atomic_numbers.items() if k != "X"}
    return _SYMBOLS


def _atomic_number(token: str) -> int:
    if token.isdigit():
        return int(token)
    z = _symbol_table().get(token.upper())
    if z is None:
        raise ValueError(f"unknown element {token[:10]!r}")
    return z


def _parse_xyz(text: str) -> tuple[str, np.ndarray, np.ndarray, int]:
    lines = text.splitlines()
    n = int(lines[0].split()[0])
    comment = lines[1].strip() if len(lines) > 1 else ""
    extended = "=" in comment
    standard = "Properties=species:S:1:pos:R:3" in comment or "Properties=" not in comment
    periodic = 'pbc="T' in comment or "pbc=T" in comment
    periodic = periodic or ("Lattice=" in comment and "pbc=" not in comment)
    if extended and (not standard or periodic):
        from ase.io import read

        atoms = read(io.StringIO(text), format="extxyz")
        if atoms.pbc.any():
            raise ValueError("periodic cell: screen handles molecules only")
        name = str(atoms.info.get("name", atoms.info.get("id", "")))
        charge = int(round(float(atoms.info.get("charge", 0))))
        return name, np.asarray(atoms.numbers, np.int64), np.asarray(atoms.positions, float), charge
    z = np.empty(n, dtype=np.int64)
    pos = np.empty((n, 3), dtype=np.float64)
    for k, line in enumerate(lines[2 : 2 + n]):
        tok = line.split()
        if len(tok) < 4:
            raise ValueError(f"xyz atom line {k + 1} has {len(tok)} fields")
        z[k] = _atomic_number(tok[0])
        try:
            pos[k] = (float(tok[1]), float(tok[2]), float(tok[3]))
        except ValueError:
            raise ValueError(f"xyz atom line {k + 1}: bad coordinates") from None
    name = "" if extended or len(comment) > 100 else comment
    charge = 0
    if extended:
        for tok in comment.split():
            if tok.startswith("charge="):
                charge = int(round(float(tok[7:].strip('"'))))
    return name, z, pos, charge


def _parse_sdf(text: str) -> tuple[str, np.ndarray, np.ndarray, int]:
    from rdkit import Chem

    mol = Chem.MolFromMolBlock(text, sanitize=False, removeHs=False, strictParsing=True)
    if mol is None:
        raise ValueError("unparsable SDF record")
    if mol.GetNumConformers() == 0:
        raise ValueError("SDF record has no coordinates")
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3)
    name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
    return name, z, pos, sum(a.GetFormalCharge() for a in mol.GetAtoms())


def _parse_smiles(text: str, seed: int) -> tuple[str, np.ndarray, np.ndarray, int]:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    tok = text.split(None, 1)
    smiles, name = tok[0], (tok[1].strip() if len(tok) > 1 else "")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles[:40]!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError("RDKit conformer embedding failed")
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3)
    return name, z, pos, Chem.GetFormalCharge(mol)


def allowed_species(config) -> int | tuple[str, ...]:
    """What ``validate`` checks z against: the model's element list (matgl models, z atomic
    numbers) or its ``max_z`` (z < max_z)."""
    return config.element_types if config.element_types is not None else config.max_z


def validate(z: np.ndarray, pos: np.ndarray, max_z: int | tuple[str, ...]) -> str | None:
    """The model's own input checks, per record, so one bad record never reaches a batch.
    ``max_z``: ``allowed_species(model.config)``."""
    if z.shape[0] == 0:
        return "empty structure (no atoms)"
    if not np.isfinite(pos).all():
        return "positions contain NaN or inf"
    if isinstance(max_z, tuple):
        from ..model.elements import NUMBERS, symbol

        known = {NUMBERS[s] for s in max_z}
        missing = sorted({int(v) for v in z.tolist()} - known)
        if missing:
            names = ", ".join(symbol(v) for v in missing[:5])
            return f"element(s) {names} not in the model's element_types"
        max_z = 10**9
    bad = z[(z < 0) | (z >= max_z)]
    if bad.size:
        bad_z = sorted(set(bad.tolist()))[:5]
        return f"atomic number(s) {bad_z} outside the model's 0..{max_z - 1}"
    if z.shape[0] > 1 and np.unique(pos, axis=0).shape[0] < z.shape[0]:
        return "coincident atoms (distance 0)"
    return None


def parse_record(raw: RawRecord, max_z: int | tuple[str, ...], seed: int = 0) -> Record:
    """Parse and validate one framed record; failures become ``Record.error``, never raise."""
    if raw.error is not None:
        return Record(raw.id, "", None, None, raw.nbytes, short_error(raw.error))
    try:
        if raw.fmt == "sdf":
            name, z, pos, charge = _parse_sdf(raw.text)
        elif raw.fmt == "xyz":
            name, z, pos, charge = _parse_xyz(raw.text)
        else:
            name, z, pos, charge = _parse_smiles(raw.text, seed)
    except Exception as exc:  # any parser failure is a per-record status, never a crash
        return Record(raw.id, "", None, None, raw.nbytes, short_error(exc))
    error = validate(z, pos, max_z)
    return Record(
        raw.id, name, z, pos, raw.nbytes, None if error is None else short_error(error), charge
    )


def hill_formula(z: np.ndarray | None) -> str:
    if z is None or z.size == 0:
        return ""
    from ase.data import chemical_symbols

    counts = np.bincount(z[(z >= 0) & (z < len(chemical_symbols))])
    items = {chemical_symbols[k]: int(c) for k, c in enumerate(counts) if c}
    if "C" in items:  # Hill order: C, H, then alphabetical; without carbon all alphabetical
        order = ["C"] + (["H"] if "H" in items else []) + sorted(set(items) - {"C", "H"})
    else:
        order = sorted(items)
    return "".join(s + (str(items[s]) if items[s] > 1 else "") for s in order)
