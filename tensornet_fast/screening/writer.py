"""Result sinks that never lose work, never touch a file that is not theirs, and resume cleanly.

File-safety rules (docs/cli.md):

* An input is never opened for writing: ``OUT`` (and the lock and relaxed-geometry files next
  to it) may not be, or link to, any input.
* Only the command's own output is modified: an existing CSV is appended to only when its
  header is exactly the columns this run writes; an existing Parquet directory only when it
  holds nothing but this writer's files; an existing geometry file only when its frames carry
  this writer's mark. Anything else is refused before a byte is written.
* CSV (``OUT`` not ending in ``.parquet``): rows are appended and flushed after every batch; a
  torn last line left by a hard kill is cut off when the file is reopened (the file is its own
  journal).
* Parquet (``OUT`` ending in ``.parquet``): ``OUT`` is a directory dataset (``part-*.parquet``,
  read it with ``pandas.read_parquet(OUT)`` or ``pyarrow.dataset.dataset(OUT)``). Rows go first
  to a flushed CSV journal ``OUT/_pending.csv`` (ignored by dataset readers: leading ``_``) and
  are rolled into a new part, written to a temporary file and renamed, every ``rows_per_part``
  rows and on close.
* ``-`` (stdout) and other non-regular files (``/dev/null``, pipes) are streams: no resume.
* One run at a time per output: an exclusive lock (``OUT.lock``, or ``OUT/_lock``).

Every sink exposes ``done``: file key -> boolean mask of record indices already written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import InputError
from .batching import LIST_COLUMNS, UNITS

_FLOAT = float
_TYPES = {
    "n_atoms": int,
    "energy_eV": _FLOAT,
    "fmax_eV_per_A": _FLOAT,
    "relaxed_energy_eV": _FLOAT,
    "relaxed_fmax_eV_per_A": _FLOAT,
    "relax_steps": int,
    "converged": lambda s: s == "True",
}
for _c in LIST_COLUMNS:
    _TYPES[_c] = lambda s: [float(v) for v in s.split()]

LOCK_MARK = "tensornet-fast output lock"
GEOMETRY_MARK = "source=tensornet-fast-relax"
_HEADER_PROBE = 1 << 16  # bytes read to find (and check) an existing CSV's header line


# ---------------------------------------------------------------------------------- checks
def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def refuse_inputs(paths: Iterable[str], inputs: Sequence[str], what: str = "--out") -> None:
    """InputError if any path the run writes is one of the inputs."""
    for path in paths:
        for inp in inputs:
            if _same_file(path, inp):
                raise InputError(
                    f"{what} {path} is the input {inp}: results never overwrite inputs; "
                    "choose another output file"
                )


def relaxed_path(out: str) -> str:
    """Where ``--relax`` puts the relaxed geometries: beside the table, suffix replaced."""
    out = out.rstrip("/")
    base, ext = os.path.splitext(out)
    return (base if ext.lower() in (".csv", ".parquet") else out) + ".relaxed.extxyz"


def is_stream(path: str) -> bool:
    return path == "-" or (
        os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)
    )


# ---------------------------------------------------------------------------------- lock
class OutputLock:
    """An exclusive lock next to the output, so two runs never append to the same OUT (which
    would duplicate rows). A second run is refused with a message. The lock file holds a mark;
    an existing file without it is not ours and is refused, never touched."""

    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        if os.path.isdir(path):
            raise InputError(f"lock file {path} is a directory; remove it or choose another --out")
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, encoding="utf-8", errors="replace") as fh:
                head = fh.read(len(LOCK_MARK))
            if head != LOCK_MARK:
                raise InputError(
                    f"{path} exists and is not a tensornet-fast lock file; this run would use it "
                    "as its lock: move it away or choose another --out"
                )
        self._fh = open(path, "a+")  # appending never changes existing bytes
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no protection against concurrent runs
            pass
        except OSError:
            self._fh.close()
            out = path[: -len(".lock")] if path.endswith(".lock") else os.path.dirname(path)
            raise InputError(
                f"another run is writing {out} (its lock {path} is held); wait for it to finish, "
                "or choose another --out"
            ) from None
        if os.fstat(self._fh.fileno()).st_size == 0:
            self._fh.write(f"{LOCK_MARK}: pid {os.getpid()}\n")
            self._fh.flush()

    def release(self) -> None:
        if self._fh.closed:
            return
        try:  # remove the lock file only while it is still the one this run locked
            mine, there = os.fstat(self._fh.fileno()), os.stat(self.path)
            if (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev):
                os.remove(self.path)
        except OSError:
            pass
        self._fh.close()


# ---------------------------------------------------------------------------------- CSV
def done_masks(ids: Iterable[str]) -> dict[str, np.ndarray]:
    per_key: dict[str, list[int]] = {}
    for ident in ids:
        key, _, idx = ident.rpartition(":")
        if key and idx.isdigit():
            per_key.setdefault(key, []).append(int(idx))
    masks = {}
    for key, idx in per_key.items():
        arr = np.asarray(idx, dtype=np.int64)
        mask = np.zeros(int(arr.max()) + 1, dtype=bool)
        mask[arr] = True
        masks[key] = mask
    return masks


def format_value(v: object) -> str:
    """CSV text of a cell: numbers round-trip exactly in their precision (float64: repr,
    float32: the shortest digits that identify the float32), lists space-separated."""
    if v is None:
        return ""
    if isinstance(v, np.float32):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(format_value(x) for x in v)
    return str(v)


def _repair_tail(path: str) -> None:
    """Cut a torn last line (no trailing newline) left by a hard kill mid-write."""
    size = os.path.getsize(path)
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            k = chunk.rfind(b"\n")
            if k >= 0:
                fh.truncate(start + k + 1)
                return
            pos = start
        fh.truncate(0)


def read_header(path: str) -> list[str] | None:
    """The first CSV line of ``path`` as a list, or None if it has no complete first line
    within 64 KiB or is not text (then it is not one of our tables). Reads only."""
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_PROBE)
    k = head.find(b"\n")
    if k < 0 or b"\0" in head[:k]:
        return None
    try:
        line = head[:k].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return next(csv.reader([line.rstrip("\r")]), None)


def read_csv_rows(path: str) -> list[dict]:
    """Rows of a result CSV with typed values (None for empty cells, lists for list columns)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for k, v in row.items():
            if v == "" or v is None:
                row[k] = None
            elif k in _TYPES:
                row[k] = _TYPES[k](v)
    return rows


class CsvSink:
    fsync_every_s = 10.0

    def __init__(self, path: str, columns: Sequence[str]):
        self.path = path
        self.columns = list(columns)
        self.done: dict[str, np.ndarray] = {}
        self.n_existing = 0
        if os.path.isdir(path):
            raise InputError(
                f"--out {path} is a directory; give a file name (results.csv), or a name ending "
                "in .parquet for a Parquet dataset directory"
            )
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        if not fresh:
            header = read_header(path)  # read-only until we know the file is ours
            if header != self.columns:
                if header and header[0] == "id" and "status" in header:
                    raise InputError(
                        f"{path} holds results with columns {header}; this run writes "
                        f"{self.columns}. It is left untouched: resume with the options of "
                        "the first run (e.g. --relax, --forces, --stress), or choose a new --out"
                    )
                raise InputError(
                    f"{path} exists and is not a results table of this command (its first line "
                    "is not our header); it is left untouched: choose another --out"
                )
            _repair_tail(path)
            with open(path, newline="") as fh:
                reader = csv.reader(fh)
                next(reader, None)
                ids = [row[0] for row in reader if row]
            self.n_existing = len(ids)
            self.done = done_masks(ids)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._fh = open(path, "a", newline="")
        if fresh:
            self._fh.write(",".join(self.columns) + "\r\n")
            self._fh.flush()
        self._last_sync = time.monotonic()

    def write(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf)
        for row in rows:
            w.writerow([format_value(row.get(c)) for c in self.columns])
        self._fh.write(buf.getvalue())  # one write per batch
        self._fh.flush()
        if time.monotonic() - self._last_sync > self.fsync_every_s:
            os.fsync(self._fh.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


class StreamSink:
    """CSV to stdout or another stream (``-``, ``/dev/null``, a pipe): header, then rows,
    flushed per batch. Nothing to resume from."""

    def __init__(self, path: str, columns: Sequence[str]):
        self.path = path
        self.columns = list(columns)
        self.done: dict[str, np.ndarray] = {}
        self.n_existing = 0
        self._own = path != "-"
        self._fh = open(path, "w", newline="") if self._own else sys.stdout
        self._fh.write(",".join(self.columns) + "\n")
        self._fh.flush()

    def write(self, rows: Sequence[dict]) -> None:
        buf = io.StringIO()  # whole rows only, one write per batch
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            w.writerow([format_value(row.get(c)) for c in self.columns])
        self._fh.write(buf.getvalue())
        self._fh.flush()

    def close(self) -> None:
        if self._own and not self._fh.closed:
            self._fh.close()
        elif not self._own:
            self._fh.flush()


# ---------------------------------------------------------------------------------- Parquet
def _arrow_schema(columns: Sequence[str]):
    import pyarrow as pa

    types = {
        "n_atoms": pa.int64(),
        "energy_eV": pa.float64(),
        "fmax_eV_per_A": pa.float64(),
        "relaxed_energy_eV": pa.float64(),
        "relaxed_fmax_eV_per_A": pa.float64(),
        "relax_steps": pa.int64(),
        "converged": pa.bool_(),
    }
    for c in LIST_COLUMNS:
        types[c] = pa.list_(pa.float64())
    fields = [
        pa.field(c, types.get(c, pa.string()), metadata={"unit": UNITS[c]} if c in UNITS else None)
        for c in columns
    ]
    meta = {"tensornet_fast_units": json.dumps({c: UNITS[c] for c in columns if c in UNITS})}
    return pa.schema(fields, metadata=meta)


def _is_ours_in_dataset(name: str) -> bool:
    return (
        (name.startswith("part-") and name.endswith(".parquet"))
        or name in ("_pending.csv", "_pending.csv.tmp", "_lock")
        or (name.startswith("_part-") and name.endswith(".tmp"))
    )


class ParquetSink:
    def __init__(self, path: str, columns: Sequence[str], rows_per_part: int = 100_000):
        import pyarrow.parquet as pq

        self.path = path
        self.columns = list(columns)
        self.rows_per_part = rows_per_part
        self.schema = _arrow_schema(self.columns)
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{path} is a file; a .parquet output is a directory dataset")
        os.makedirs(path, exist_ok=True)
        ids: list[str] = []
        for name in sorted(os.listdir(path)):
            if name.startswith("part-") and name.endswith(".parquet"):
                part = os.path.join(path, name)
                names = pq.read_schema(part).names
                if names != self.columns:
                    raise InputError(
                        f"{part} has columns {names}, this run writes {self.columns} "
                        "(same options as the first run to resume, or a new --out)"
                    )
                ids.extend(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        self.journal_path = os.path.join(path, "_pending.csv")
        if os.path.exists(self.journal_path):  # rows of an interrupted run -> a part
            if read_header(self.journal_path) not in (None, self.columns):
                raise InputError(
                    f"{self.journal_path} has other columns than this run writes "
                    f"{self.columns} (same options as the first run to resume, or a new --out)"
                )
            _repair_tail(self.journal_path)
            seen = set(ids)
            pending = [r for r in read_csv_rows(self.journal_path) if r["id"] not in seen]
            self._write_part(pending)
            ids.extend(r["id"] for r in pending)
        self.n_existing = len(ids)
        self.done = done_masks(ids)
        self._pending: list[dict] = []
        self._journal = self._new_journal()

    def _new_journal(self) -> CsvSink:
        tmp = self.journal_path + ".tmp"
        with open(tmp, "w", newline="") as fh:
            fh.write(",".join(self.columns) + "\r\n")
        os.replace(tmp, self.journal_path)
        return CsvSink(self.journal_path, self.columns)

    def _write_part(self, rows: Sequence[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        table = pa.Table.from_pylist(
            [{c: r.get(c) for c in self.columns} for r in rows], schema=self.schema
        )
        name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = os.path.join(self.path, "_" + name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, os.path.join(self.path, name))  # atomic: a part is whole or absent

    def _roll(self) -> None:
        self._write_part(self._pending)
        self._pending = []
        self._journal.close()
        self._journal = self._new_journal()

    def write(self, rows: Sequence[dict]) -> None:
        self._journal.write(rows)
        self._pending.extend(rows)
        if len(self._pending) >= self.rows_per_part:
            self._roll()

    def close(self) -> None:
        if self._journal._fh.closed:
            return
        self._write_part(self._pending)
        self._pending = []
        self._journal.close()
        os.remove(self.journal_path)


def check_parquet_dir(path: str) -> None:
    """An existing .parquet directory must hold only this writer's files."""
    if not os.path.isdir(path):
        return
    foreign = sorted(n for n in os.listdir(path) if not _is_ours_in_dataset(n))
    if foreign:
        raise InputError(
            f"{path} holds files this command did not write ({', '.join(foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}); it is left untouched: choose another --out"
        )


# ---------------------------------------------------------------------------------- geometries
def _frame_ids(path: str) -> tuple[set[str], int]:
    """(ids of complete frames, byte length of the complete frames) of our geometry file."""
    ids: set[str] = set()
    good = 0
    with open(path, "rb") as fh:
        while True:
            start = fh.tell()
            count = fh.readline()
            if not count:
                break
            try:
                n = int(count.split()[0])
            except (ValueError, IndexError):
                break
            comment = fh.readline()
            lines = [fh.readline() for _ in range(n)]
            if not comment.endswith(b"\n") or any(not ln.endswith(b"\n") for ln in lines):
                break
            text = comment.decode("utf-8", errors="replace")
            k = text.find('id="')
            if k < 0 or GEOMETRY_MARK not in text:
                raise InputError(f"{path} has a frame this command did not write (byte {start})")
            ids.add(text[k + 4 : text.index('"', k + 4)])
            good = fh.tell()
    return ids, good


class GeometrySink:
    """Relaxed geometries as extended XYZ frames (``id``, ``name``, energies, ``converged``
    in each comment line), appended before the rows of their batch are written: a frame whose
    row is missing after a hard kill is not written twice on resume, a torn last frame is cut."""

    def __init__(self, path: str):
        self.path = path
        self.ids: set[str] = set()
        if os.path.isdir(path):
            raise InputError(f"{path} (relaxed geometries) is a directory; choose another --out")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as fh:
                fh.readline()
                if GEOMETRY_MARK.encode() not in fh.readline():
                    raise InputError(
                        f"{path} exists and was not written by `screen --relax`; it is left "
                        "untouched: move it away or choose another --out"
                    )
            self.ids, good = _frame_ids(path)
            if good < os.path.getsize(path):
                with open(path, "rb+") as fh:
                    fh.truncate(good)
        self._fh = open(path, "a")

    def write(self, rows: Sequence[dict]) -> None:
        from .elements import symbol

        parts = []
        for row in rows:
            geo = row.get("_relaxed")
            if geo is None or row["id"] in self.ids:
                continue
            z, pos = geo
            name = " ".join(str(row.get("name") or "").replace('"', "'").split())
            name = f' name="{name}"' if name else ""  # ASE misreads an empty quoted value
            comment = (
                f'Properties=species:S:1:pos:R:3 id="{row["id"]}"{name} '
                f"energy_eV={format_value(row['relaxed_energy_eV'])} "
                f"fmax_eV_per_A={format_value(row['relaxed_fmax_eV_per_A'])} "
                f'converged={"T" if row["converged"] else "F"} pbc="F F F" {GEOMETRY_MARK}'
            )
            atoms = "".join(
                f"{symbol(int(zz))} {x!r} {y!r} {w!r}\n" for zz, (x, y, w) in zip(z, pos.tolist())
            )
            parts.append(f"{len(z)}\n{comment}\n{atoms}")
            self.ids.add(row["id"])
        if parts:
            self._fh.write("".join(parts))
            self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


# ---------------------------------------------------------------------------------- open
def open_sink(
    path: str,
    columns: Sequence[str],
    rows_per_part: int = 100_000,
    *,
    inputs: Sequence[str] = (),
    geometries: bool = False,
):
    """The sink for ``path``: Parquet directory if it ends in .parquet, a stream for ``-`` and
    non-regular files, else CSV; locked against concurrent runs until ``close``. Every check
    that can refuse the output runs before anything is created or written. ``geometries``:
    also write relaxed geometries beside the table (:func:`relaxed_path`)."""
    if path != "-":
        path = path.rstrip("/") or path
    geo_path = relaxed_path(path) if geometries else None
    if is_stream(path):
        if geometries:
            raise InputError("--relax needs --out FILE: the relaxed geometries go beside it")
        return _Locked(StreamSink(path, columns), None, None)
    parquet = path.lower().endswith(".parquet")
    lock_path = os.path.join(path, "_lock") if parquet else path + ".lock"
    refuse_inputs([path, lock_path] + ([geo_path] if geo_path else []), inputs)
    if parquet:
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{path} is a file; a .parquet output is a directory dataset")
        check_parquet_dir(path)
    elif os.path.isdir(path):
        raise InputError(
            f"--out {path} is a directory; give a file name (results.csv), or a name ending in "
            ".parquet for a Parquet dataset directory"
        )
    lock = OutputLock(lock_path)
    sink = geo = None
    try:
        sink = ParquetSink(path, columns, rows_per_part) if parquet else CsvSink(path, columns)
        if geo_path is not None:
            geo = GeometrySink(geo_path)
    except BaseException:
        if sink is not None:
            sink.close()
        lock.release()
        raise
    return _Locked(sink, lock, geo)


class _Locked:
    def __init__(self, sink, lock: OutputLock | None, geometries: GeometrySink | None):
        self.sink, self.lock, self.geometries = sink, lock, geometries
        self.done, self.n_existing = sink.done, sink.n_existing
        self.path = sink.path

    def write(self, rows: Sequence[dict]) -> None:
        if self.geometries is not None:
            self.geometries.write(rows)  # first: a row never points at a missing geometry
        self.sink.write(rows)

    def close(self) -> None:
        try:
            if self.geometries is not None:
                self.geometries.close()
            self.sink.close()
        finally:
            if self.lock is not None:
                self.lock.release()


def read_results(path: str) -> list[dict]:
    """All rows of a result table (CSV file or Parquet directory) as dicts."""
    if path.rstrip("/").lower().endswith(".parquet"):
        import pyarrow.dataset as ds

        rows = ds.dataset(path.rstrip("/"), format="parquet").to_table().to_pylist()
        journal = os.path.join(path, "_pending.csv")
        if os.path.exists(journal):
            rows += read_csv_rows(journal)
        return rows
    return read_csv_rows(path)
