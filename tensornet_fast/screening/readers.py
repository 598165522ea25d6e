"""Streaming readers for structure files: SDF, (ext)XYZ, SMILES, and anything else ASE reads.

Reading happens in two stages so that the expensive part can run anywhere:

1. :func:`iter_raw` frames a file into :class:`RawRecord` chunks (one per record) in a single
   pass -- cheap, no RDKit -- and never holds more than one record (ASE formats: one frame).
2. :func:`parse_record` turns a chunk into a :class:`Record` (atomic numbers, positions, cell,
   or an error). For SMILES this generates a 3D conformer with RDKit ETKDG (hydrogens added,
   seeded).

A record's id is ``"<file key>:<index>"`` where the index counts every record of the file,
broken ones included, so ids are stable between runs (resume) and between single-process and
distributed runs. The file key is the basename unless two inputs share one, then the path.

A record that does not mean exactly one structure is an error record, never a guess: an XYZ
count line that disagrees with the atom lines that follow it, two molecule blocks in one SDF
record, a 2D drawing, mixed periodicity (a slab's ``pbc="T T F"``), an empty or binary file.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from ..errors import InputError
from .elements import MAX_ELEMENT, atomic_number, hill_formula, symbols

__all__ = ["RawRecord", "Record", "hill_formula", "iter_raw", "parse_record"]

SDF_SUFFIXES = (".sdf", ".sd", ".mol")
XYZ_SUFFIXES = (".xyz", ".extxyz")
SMILES_SUFFIXES = (".smi", ".smiles", ".txt")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")
_SMILES_HEADERS = {"smiles", "smi", "canonical_smiles", "isomeric_smiles"}
_MAX_ERROR = 300  # characters of an error status after "error: "
# SMILES limits: ETKDG's cost grows steeply with size (a 2 MB SMILES never finishes embedding);
# screening libraries are drug-like (< 200 atoms). Larger inputs are an error row, not a hang.
MAX_SMILES_CHARS = 5_000
MAX_EMBED_ATOMS = 1_000
_BINARY_PROBE = 8192  # bytes read to tell a binary file from text (a NUL byte)


@dataclass
class RawRecord:
    key: str  # file key (basename or path)
    index: int  # record index inside the file
    fmt: str  # "sdf" | "xyz" | "smiles" | "ase"
    text: str  # the record's text; "" when framing already failed (see error) or for "ase"
    nbytes: int  # bytes of input this record accounts for (progress)
    error: str | None = None
    payload: tuple | None = None  # "ase": (z, pos, cell, pbc, name, charge) read by ASE

    @property
    def id(self) -> str:
        return f"{self.key}:{self.index}"


@dataclass
class Record:
    id: str
    name: str
    z: np.ndarray | None  # int64 [n]
    pos: np.ndarray | None  # float64 [n, 3], Angstrom
    nbytes: int = 0
    error: str | None = None
    charge: float = 0.0  # total charge (RDKit formal charges, extxyz/ASE info "charge")
    cell: np.ndarray | None = None  # float64 [3, 3] rows a, b, c: periodic in all 3 directions

    @property
    def n_atoms(self) -> int:
        return 0 if self.z is None else int(self.z.shape[0])

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def periodic(self) -> bool:
        return self.cell is not None


def describe(exc: BaseException) -> str:
    """An exception as one line that always says what went wrong (MemoryError and some
    extension errors have an empty message: then the type is the message)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ValueError) and text:
        return text  # our own parse errors: the message is the whole story
    name = type(exc).__name__
    return f"{name}: {text}" if text else f"{name} (no message)"


def short_error(msg: object) -> str:
    """One line, bounded length, prefixed ``error: `` (the ``status`` column); never empty."""
    text = describe(msg) if isinstance(msg, BaseException) else " ".join(str(msg).split())
    if text.startswith("error:"):
        text = text[6:].strip()
    if not text:
        text = "unknown failure (no message)"
    if len(text) > _MAX_ERROR:
        text = text[: _MAX_ERROR - 3] + "..."
    return "error: " + text


def detect_format(path: str) -> str:
    """``sdf``, ``xyz``, ``smiles`` by suffix; every other file is read by ASE (``ase``)."""
    low = path.lower()
    if low.endswith(COMPRESSED_SUFFIXES):
        raise InputError(f"input {path}: compressed inputs are not supported; decompress first")
    if low.endswith(SDF_SUFFIXES):
        return "sdf"
    if low.endswith(XYZ_SUFFIXES):
        return "xyz"
    if low.endswith(SMILES_SUFFIXES):
        return "smiles"
    return "ase"


def check_inputs(paths: Sequence[str]) -> None:
    """Refuse, before any work, inputs that cannot be read at all (each named)."""
    if not paths:
        raise InputError("no input files given")
    real = [os.path.realpath(p) for p in paths]
    for path, rp in zip(paths, real):
        if real.count(rp) > 1:
            raise InputError(f"input {path} is given more than once")
    for path in paths:
        detect_format(path)
        if not os.path.exists(path):
            raise InputError(f"input {path} does not exist")
        if os.path.isdir(path):
            raise InputError(f"input {path} is a directory, not a structure file")
        if not os.access(path, os.R_OK):
            raise InputError(f"input {path} is not readable (permissions)")


def file_keys(paths: Sequence[str]) -> dict[str, str]:
    """path -> key used in ids: the basename, or the path itself where basenames collide."""
    names = [os.path.basename(p) for p in paths]
    return {p: (n if names.count(n) == 1 else p) for p, n in zip(paths, names)}


# ---------------------------------------------------------------------------------- framing
# Each framer yields (text, nbytes, error, payload) per record, in file order.
Frame = tuple[str, int, "str | None", "tuple | None"]


def _frame_sdf(fh: io.TextIOBase) -> Iterator[Frame]:
    lines: list[str] = []
    nbytes = 0
    for line in fh:
        nbytes += len(line)
        if line.rstrip("\r\n").strip() == "$$$$":
            yield "".join(lines), nbytes, None, None
            lines, nbytes = [], 0
        else:
            lines.append(line)
    if any(s.strip() for s in lines):
        yield "".join(lines), nbytes, None, None


def _count(line: str) -> int | None:
    """The atom count if ``line`` is an XYZ count line (one non-negative integer), else None."""
    tok = line.split()
    return int(tok[0]) if len(tok) == 1 and tok[0].isdigit() else None


def _atom_like(line: str) -> bool:
    """Whether ``line`` reads as an XYZ atom line (a symbol or number, then 3 coordinates)."""
    tok = line.split()
    if len(tok) < 4:
        return False
    try:
        [float(t) for t in tok[1:4]]
    except ValueError:
        return False
    return True


def _frame_xyz(fh: io.TextIOBase) -> Iterator[Frame]:
    """Frames of ``count / comment / count atom lines``, checked against what follows: a frame
    with fewer or more atom lines than its count line says is one error record (the atom lines
    are kept in it, so they never turn into a fragment or another record). A line that is
    neither a count line nor an atom line starts an error record of its own, and the reader
    re-synchronises on the next count line (a line holding one integer)."""
    pending: str | None = None

    def readline() -> str:
        nonlocal pending
        if pending is not None:
            line, pending = pending, None
            return line
        return fh.readline()

    while True:
        line = readline()
        if not line:
            return
        if not line.strip():
            continue  # blank lines between frames
        n = _count(line)
        if n is None:
            skipped = 0
            while True:  # resync: skip to the next count line
                nxt = fh.readline()
                if not nxt:
                    break
                if _count(nxt) is not None:
                    pending = nxt
                    break
                skipped += len(nxt)
            msg = f"not an XYZ frame: expected an atom-count line, found {line.strip()[:30]!r}"
            yield "", len(line) + skipped, msg, None
            continue
        comment = fh.readline()
        chunk = [line, comment]
        if not comment:
            yield line, len(line), f"truncated XYZ frame: count line {n}, then the file ends", None
            return
        error = None
        for k in range(n):
            atom = fh.readline()
            if not atom:
                error = f"truncated XYZ frame: count line says {n} atoms, the file ends after {k}"
                break
            if _count(atom) is not None:
                pending = atom
                error = (
                    f"XYZ count line says {n} atoms but only {k} atom lines come before the next "
                    "count line"
                )
                break
            chunk.append(atom)
        text = "".join(chunk)
        nbytes = len(text)
        if error is None:  # atom lines beyond the count belong to this frame: it is malformed
            extra = 0
            while True:
                nxt = fh.readline()
                if not nxt:
                    break
                if not nxt.strip():
                    nbytes += len(nxt)
                    continue
                if not _atom_like(nxt):  # a count line, or the start of a broken frame
                    pending = nxt
                    break
                extra += 1
                nbytes += len(nxt)
            if extra:
                error = (
                    f"XYZ count line says {n} atoms but {n + extra} atom lines follow "
                    "(the count must equal the number of atom lines)"
                )
        yield text, nbytes, error, None


def _frame_smiles(fh: io.TextIOBase) -> Iterator[Frame]:
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
        yield stripped, carried + len(line), None, None
        carried = 0


def _frame_ase(path: str) -> Iterator[Frame]:
    """Frames of any format ASE reads (cif, POSCAR, pdb, traj, ...), one at a time. A frame ASE
    cannot read ends the file with an error record (ASE cannot re-synchronise)."""
    try:
        from ase.io import iread
    except ImportError:
        yield "", 0, f"reading {os.path.basename(path)} needs ASE: pip install ase", None
        return
    size = os.path.getsize(path)
    frames = iread(path, index=":")
    k = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # any reader failure: this record's status
            yield "", size if k == 0 else 0, f"ASE cannot read frame {k}: {describe(exc)}", None
            return
        pbc = tuple(bool(p) for p in atoms.pbc)
        cell = np.asarray(atoms.cell.array, dtype=np.float64) if any(pbc) else None
        payload = (
            np.asarray(atoms.numbers, dtype=np.int64),
            np.asarray(atoms.positions, dtype=np.float64),
            cell,
            pbc,
            str(atoms.info.get("name", atoms.info.get("id", ""))),
            atoms.info.get("charge", 0.0),
        )
        yield "", size if k == 0 else 0, None, payload
        k += 1


_TEXT_FRAMERS = {"sdf": _frame_sdf, "xyz": _frame_xyz, "smiles": _frame_smiles}


def _is_binary(path: str) -> bool:
    with open(path, "rb") as fh:
        return b"\0" in fh.read(_BINARY_PROBE)


def _frames(path: str, fmt: str) -> Iterator[Frame]:
    if fmt == "ase":
        yield from _frame_ase(path)
        return
    if _is_binary(path):
        msg = f"binary file (NUL bytes), not a text {fmt.upper()} file"
        yield "", os.path.getsize(path), msg, None
        return
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        yield from _TEXT_FRAMERS[fmt](fh)


def iter_raw(
    paths: Sequence[str],
    skip: Mapping[str, np.ndarray] | None = None,
    on_skip: Callable[[int], None] | None = None,
) -> Iterator[RawRecord]:
    """Frame every input file into :class:`RawRecord` chunks, streaming. A file without any
    record (empty, or only comments) gives one error record, index 0.

    ``skip`` maps a file key to a boolean mask over record indices already done (resume): those
    are not yielded; ``on_skip(nbytes)`` is told about each one so progress stays right."""
    keys = file_keys(paths)
    for path in paths:
        fmt = detect_format(path)
        key = keys[path]
        done = skip.get(key) if skip else None
        index = -1
        for index, (text, nbytes, error, payload) in enumerate(_frames(path, fmt)):
            if done is not None and index < done.shape[0] and done[index]:
                if on_skip is not None:
                    on_skip(nbytes)
                continue
            yield RawRecord(key, index, fmt, text, nbytes, error, payload)
        if index < 0 and not (done is not None and done.shape[0] and done[0]):
            yield RawRecord(key, 0, fmt, "", os.path.getsize(path), "no structures in the file")


def chunked(raws: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    it = iter(raws)
    while chunk := list(islice(it, size)):
        yield chunk


# ---------------------------------------------------------------------------------- parsing
@dataclass
class Parsed:
    name: str
    z: np.ndarray
    pos: np.ndarray
    charge: float = 0.0
    cell: np.ndarray | None = None
    pbc: tuple = (False, False, False)


def _charge(value: object) -> float:
    try:
        q = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"total charge {str(value)[:20]!r} is not a number") from None
    if not np.isfinite(q):
        raise ValueError(f"total charge {q} is not finite")
    return q


# key=value pairs of an extended-XYZ comment line: value quoted, in braces, or a bare word
_KEY_VALUE = re.compile(r'(\w+)\s*=\s*("[^"]*"|\{[^}]*\}|\S+)')
_FALSE = {"F", "FALSE", "0"}
_STANDARD_PROPERTIES = "species:S:1:pos:R:3"


def _comment_pairs(comment: str) -> dict[str, str]:
    return {k.lower(): v.strip('"{}') for k, v in _KEY_VALUE.findall(comment)}


def _parse_xyz(text: str) -> Parsed:
    lines = text.splitlines()
    n = int(lines[0].split()[0])
    comment = lines[1].strip() if len(lines) > 1 else ""
    pairs = _comment_pairs(comment) if "=" in comment else {}
    # anything but an all-false pbc (a T, or a value we do not know) is ASE's to read
    maybe_periodic = any(v not in _FALSE for v in pairs.get("pbc", "").upper().split())
    standard = pairs.get("properties", _STANDARD_PROPERTIES) == _STANDARD_PROPERTIES
    if "lattice" in pairs or maybe_periodic or not standard:
        return _parse_extxyz(text)  # cells, extra columns: ASE's extended-XYZ reader
    z = np.empty(n, dtype=np.int64)
    pos = np.empty((n, 3), dtype=np.float64)
    for k, line in enumerate(lines[2 : 2 + n]):
        tok = line.split()
        if len(tok) < 4:
            raise ValueError(f"XYZ atom line {k + 1} has {len(tok)} fields, needs 4 (symbol x y z)")
        z[k] = atomic_number(tok[0])
        try:
            pos[k] = (float(tok[1]), float(tok[2]), float(tok[3]))
        except ValueError:
            raise ValueError(f"XYZ atom line {k + 1}: bad coordinates {tok[1:4]}") from None
    name = pairs.get("name", pairs.get("id", "")) if pairs else comment[:100]
    return Parsed(name, z, pos, _charge(pairs.get("charge", 0.0)))


def _parse_extxyz(text: str) -> Parsed:
    try:
        from ase.io import read
    except ImportError:
        msg = "extended XYZ with a cell or extra columns needs ASE: pip install ase"
        raise ValueError(msg) from None
    atoms = read(io.StringIO(text), format="extxyz")
    return _from_atoms_data(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        tuple(bool(p) for p in atoms.pbc),
        str(atoms.info.get("name", atoms.info.get("id", ""))),
        atoms.info.get("charge", 0.0),
    )


def _from_atoms_data(z, pos, cell, pbc, name, charge) -> Parsed:
    pbc = tuple(bool(p) for p in pbc)
    z = np.asarray(z, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    if any(pbc) and not all(pbc):
        flags = " ".join("T" if p else "F" for p in pbc)
        raise ValueError(
            f'mixed periodicity pbc="{flags}" (a slab or wire): the model computes fully '
            "periodic cells or isolated molecules; set pbc to all T or all F"
        )
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3) if all(pbc) else None
    return Parsed(str(name), z, pos, _charge(charge), cell, pbc)


class _RDKitLog:
    """Collects RDKit's log messages while parsing one record in this thread, so an error row
    says why RDKit refused it, and keeps them off stderr (the row has them). RDKit is switched
    to Python logging once (``rdBase.LogToPythonLogger``); a filter on the ``rdkit`` logger
    takes the messages of threads that are collecting and passes all others on unchanged."""

    _local = threading.local()
    _installed = False

    @classmethod
    def _install(cls) -> None:
        if cls._installed:
            return
        import logging

        from rdkit import rdBase

        def take(record: logging.LogRecord) -> bool:
            buf = getattr(cls._local, "buf", None)
            if buf is None:
                return True
            buf.append(record.getMessage())
            return False

        rdBase.LogToPythonLogger()
        logging.getLogger("rdkit").addFilter(take)
        cls._installed = True

    def __enter__(self):
        self._install()
        self.messages: list[str] = []
        self._local.buf = self.messages
        return self

    def __exit__(self, *exc) -> None:
        self._local.buf = None

    def details(self) -> str:
        msgs = [re.sub(r"^\[[\d:]+\]\s*", "", m).strip() for m in self.messages]
        msgs = [m for m in msgs if m and not set(m) <= set("~^ ")]
        return (": " + "; ".join(msgs)) if msgs else ""


def _parse_sdf(text: str) -> Parsed:
    from rdkit import Chem

    blocks = sum(1 for line in text.splitlines() if line.rstrip() == "M  END")
    if blocks > 1:
        raise ValueError(
            f"SDF record holds {blocks} molecule blocks (a '$$$$' line is missing between them)"
        )
    with _RDKitLog() as log:
        mol = Chem.MolFromMolBlock(text, sanitize=False, removeHs=False, strictParsing=True)
    if mol is None:
        raise ValueError("unparsable SDF record" + log.details())
    if mol.GetNumConformers() == 0:
        raise ValueError("SDF record has no coordinates")
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3)
    header = text.splitlines()[1] if text.count("\n") >= 1 else ""
    if header[20:22] == "2D" and z.size and not pos[:, 2].any():
        raise ValueError("SDF record has 2D coordinates (a drawing, not a 3D geometry)")
    name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
    return Parsed(name, z, pos, float(sum(a.GetFormalCharge() for a in mol.GetAtoms())))


def _parse_smiles(text: str, seed: int) -> Parsed:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    tok = text.split(None, 1)
    smiles, name = tok[0], (tok[1].strip() if len(tok) > 1 else "")
    if len(smiles) > MAX_SMILES_CHARS:
        raise ValueError(
            f"SMILES of {len(smiles)} characters is longer than the {MAX_SMILES_CHARS} this "
            "reader embeds in 3D (conformer generation would not finish)"
        )
    with _RDKitLog() as log:
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles[:40]!r}" + log.details())
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() > MAX_EMBED_ATOMS:
        raise ValueError(
            f"SMILES {smiles[:20]!r}... has {mol.GetNumAtoms()} atoms with hydrogens, more than "
            f"the {MAX_EMBED_ATOMS} this reader embeds in 3D"
        )
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    with _RDKitLog() as log:
        if AllChem.EmbedMolecule(mol, params) != 0:
            params.useRandomCoords = True
            if AllChem.EmbedMolecule(mol, params) != 0:
                raise ValueError(f"RDKit could not embed {smiles[:40]!r} in 3D" + log.details())
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3)
    return Parsed(name, z, pos, float(Chem.GetFormalCharge(mol)))


def allowed_species(config) -> int | tuple[str, ...]:
    """What ``validate`` checks z against: the model's element list (matgl models, z atomic
    numbers) or its ``max_z`` (z < max_z)."""
    return config.element_types if config.element_types is not None else config.max_z


def validate(
    z: np.ndarray,
    pos: np.ndarray,
    max_z: int | tuple[str, ...],
    cell: np.ndarray | None = None,
) -> str | None:
    """The model's own input checks, per record, so one bad record never reaches a batch.
    ``max_z``: ``allowed_species(model.config)``."""
    if z.shape[0] == 0:
        return "empty structure (no atoms)"
    if pos.shape != (z.shape[0], 3):
        return f"{pos.shape[0]} positions for {z.shape[0]} atoms"
    if not np.isfinite(pos).all():
        return "positions contain NaN or inf"
    not_elements = sorted(set(z[(z < 1) | (z > MAX_ELEMENT)].tolist()))[:5]
    if not_elements:
        return f"atomic number(s) {not_elements} are not elements (1..{MAX_ELEMENT})"
    if isinstance(max_z, tuple):  # the model's element list (matgl's element_types)
        from ..model.elements import NUMBERS

        bad = sorted({int(v) for v in z.tolist()} - {NUMBERS[s] for s in max_z})[:5]
        where = "not in the model's element_types"
    else:
        bad = sorted(set(z[z >= max_z].tolist()))[:5]
        where = f"outside the model's atomic numbers 1..{max_z - 1}"
    if bad:
        names = ", ".join(f"{s} (Z={b})" for s, b in zip(symbols(bad), bad))
        return f"element(s) {names} {where}"
    if z.shape[0] > 1 and np.unique(pos, axis=0).shape[0] < z.shape[0]:
        return "coincident atoms (distance 0)"
    if cell is not None:
        if not np.isfinite(cell).all():
            return "cell contains NaN or inf"
        volume = abs(float(np.linalg.det(cell)))
        if volume < 1e-6 * max(float(np.abs(cell).max()), 1.0) ** 3:
            return f"periodic cell is singular (volume {volume:.3g} A^3)"
    return None


def parse_record(
    raw: RawRecord, max_z: int | tuple[str, ...], seed: int = 0, periodic: bool = True
) -> Record:
    """Parse and validate one framed record; failures become ``Record.error``, never raise.
    ``max_z``: ``allowed_species(model.config)``; ``periodic=False`` (screen) makes a periodic
    structure an error record."""
    if raw.error is not None:
        return Record(raw.id, "", None, None, raw.nbytes, short_error(raw.error))
    try:
        if raw.fmt == "sdf":
            p = _parse_sdf(raw.text)
        elif raw.fmt == "xyz":
            p = _parse_xyz(raw.text)
        elif raw.fmt == "smiles":
            p = _parse_smiles(raw.text, seed)
        else:
            p = _from_atoms_data(*raw.payload)
    except Exception as exc:  # any parser failure is a per-record status
        return Record(raw.id, "", None, None, raw.nbytes, short_error(exc))
    error = validate(p.z, p.pos, max_z, p.cell)
    if error is None and p.cell is not None and not periodic:
        error = "periodic cell: screen handles molecules; `tensornet-fast energies` takes cells"
    return Record(
        raw.id,
        p.name,
        p.z,
        p.pos,
        raw.nbytes,
        None if error is None else short_error(error),
        p.charge,
        p.cell,
    )
