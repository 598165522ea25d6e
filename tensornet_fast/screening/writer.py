"""Result sinks that never lose work and resume cleanly.

* CSV (``OUT`` not ending in ``.parquet``): rows are appended and flushed after every batch; a
  torn last line left by a hard kill is cut off when the file is reopened.
* Parquet (``OUT`` ending in ``.parquet``): ``OUT`` is a directory dataset (``part-*.parquet``,
  read it with ``pandas.read_parquet(OUT)`` or ``pyarrow.dataset.dataset(OUT)``). Rows go first to
  a flushed CSV journal ``OUT/_pending.csv`` (ignored by dataset readers: leading ``_``) and are
  rolled into a new part, written atomically, every ``rows_per_part`` rows and on close.

Both expose ``done``: file key -> boolean mask of record indices already written (resume).
"""

from __future__ import annotations

import csv
import io
import os
import time
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

_TYPES = {
    "n_atoms": int,
    "energy": float,
    "fmax": float,
    "relaxed_energy": float,
    "relaxed_fmax": float,
    "relax_steps": int,
    "converged": lambda s: s == "True",
}


class OutputLock:
    """An exclusive lock next to the output, so two runs never append to the same OUT (which
    would duplicate rows). Released, and the lock file removed, by ``release``."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fh = open(path, "a")
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no protection against concurrent runs
            pass
        except OSError:
            self._fh.close()
            msg = f"another screen run is writing this output ({path} is locked)"
            raise ValueError(msg) from None

    def release(self) -> None:
        if not self._fh.closed:
            try:
                os.remove(self.path)
            except OSError:
                pass
            self._fh.close()


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


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
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


def read_csv_rows(path: str) -> list[dict]:
    """Rows of a screen CSV with typed values (None for empty cells)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for k, v in row.items():
            if v == "":
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
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        if not fresh:
            _repair_tail(path)
            with open(path, newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header is None:
                    fresh = True
                elif header != self.columns:
                    raise ValueError(
                        f"{path} has columns {header}, this run writes {self.columns} "
                        "(same options as the first run, e.g. --relax, to resume; or a new --out)"
                    )
                else:
                    ids = [row[0] for row in reader if row]
                    self.n_existing = len(ids)
                    self.done = done_masks(ids)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._fh = open(path, "w" if fresh else "a", newline="")
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
            w.writerow([_fmt(row.get(c)) for c in self.columns])
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


def _arrow_schema(columns: Sequence[str]):
    import pyarrow as pa

    types = {
        "n_atoms": pa.int64(),
        "energy": pa.float64(),
        "fmax": pa.float64(),
        "relaxed_energy": pa.float64(),
        "relaxed_fmax": pa.float64(),
        "relax_steps": pa.int64(),
        "converged": pa.bool_(),
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in columns])


class ParquetSink:
    def __init__(self, path: str, columns: Sequence[str], rows_per_part: int = 100_000):
        import pyarrow.parquet as pq

        self.path = path
        self.columns = list(columns)
        self.rows_per_part = rows_per_part
        self.schema = _arrow_schema(self.columns)
        if os.path.isfile(path):
            raise ValueError(f"{path} is a file; a .parquet output is a directory dataset")
        os.makedirs(path, exist_ok=True)
        ids: list[str] = []
        for name in sorted(os.listdir(path)):
            if name.startswith("part-") and name.endswith(".parquet"):
                part = os.path.join(path, name)
                names = pq.read_schema(part).names
                if names != self.columns:
                    raise ValueError(
                        f"{part} has columns {names}, this run writes {self.columns} "
                        "(same options as the first run to resume, or a new --out)"
                    )
                ids.extend(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        self.journal_path = os.path.join(path, "_pending.csv")
        if os.path.exists(self.journal_path):  # rows of an interrupted run -> a part
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
        with open(self.journal_path, "w", newline="") as fh:
            fh.write(",".join(self.columns) + "\r\n")
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


def open_sink(path: str, columns: Sequence[str], rows_per_part: int = 100_000):
    """The sink for ``path`` (Parquet directory if it ends in .parquet, else CSV), locked
    against concurrent runs until ``close``."""
    path = path.rstrip("/")
    parquet = path.lower().endswith(".parquet")
    if parquet and os.path.isfile(path):
        raise ValueError(f"{path} is a file; a .parquet output is a directory dataset")
    lock = OutputLock(os.path.join(path, "_lock") if parquet else path + ".lock")
    try:
        sink = ParquetSink(path, columns, rows_per_part) if parquet else CsvSink(path, columns)
    except BaseException:
        lock.release()
        raise
    return _Locked(sink, lock)


class _Locked:
    def __init__(self, sink, lock: OutputLock):
        self.sink, self.lock = sink, lock
        self.done, self.n_existing = sink.done, sink.n_existing

    def write(self, rows: Sequence[dict]) -> None:
        self.sink.write(rows)

    def close(self) -> None:
        try:
            self.sink.close()
        finally:
            self.lock.release()


def read_results(path: str) -> list[dict]:
    """All rows of a screen output (CSV file or Parquet directory) as dicts."""
    if path.rstrip("/").lower().endswith(".parquet"):
        import pyarrow.dataset as ds

        rows = ds.dataset(path.rstrip("/"), format="parquet").to_table().to_pylist()
        journal = os.path.join(path, "_pending.csv")
        if os.path.exists(journal):
            rows += read_csv_rows(journal)
        return rows
    return read_csv_rows(path)
