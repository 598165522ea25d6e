"""The screening loop: stream records -> parse/validate -> batch -> evaluate -> append rows.

``screen(...)`` runs in this process (parsing in a background thread, the model in the caller's
thread) or, with ``scheduler``/``workers``/``devices``, fans shards of raw records out to
long-lived model workers (see :mod:`.distributed`) while this process alone writes ``out``.
Either way ``out`` is the single source of truth for resume: ids already in it are skipped.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .batching import BatchEvaluator, RelaxOptions, columns, default_batch_atoms, make_batches
from .readers import RawRecord, Record, chunked, detect_format, iter_raw, parse_record
from .writer import open_sink


@dataclass(frozen=True)
class ScreenSpec:
    """Everything a worker needs to turn records into rows (picklable, hashable)."""

    model: str = "default"
    device: str = "cpu"
    backend: str = "auto"
    filter_mode: str = "auto"
    precision: int | None = None
    batch_atoms: int | None = None
    window: int = 4096
    relax: bool = False
    fmax: float = 0.05
    max_steps: int = 200
    seed: int = 0
    threads: int | None = None

    @property
    def atoms_per_batch(self) -> int:
        return self.batch_atoms or default_batch_atoms(self.device)


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
    key = (spec.model, spec.device, spec.backend, spec.filter_mode, spec.precision)
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
    evaluator = BatchEvaluator(get_model(spec), relax)
    for group in make_batches(records, spec.atoms_per_batch, spec.window):
        yield evaluator.rows(group), sum(r.nbytes for r in group)


def process_shard(raws: Sequence[RawRecord], spec: ScreenSpec) -> list[dict]:
    """Worker task: parse, validate, batch and evaluate one shard of raw records."""
    max_z = get_model(spec).config.max_z
    records = [parse_record(r, max_z, spec.seed) for r in raws]
    rows: list[dict] = []
    for batch_rows, _ in evaluate_stream(records, spec):
        rows.extend(batch_rows)
    return rows


# ---------------------------------------------------------------------------------- progress
class Progress:
    """``mode``: "bar" (tqdm over the input's bytes, so the ETA holds for a stream, with
    molecules/s), "log" (a plain line every ``log_every`` seconds), "none", or "auto" (bar on a
    terminal, log lines otherwise). ``True``/``False``/``None`` mean bar/none/auto."""

    def __init__(
        self,
        total_bytes: int,
        mode: str | bool | None = "auto",
        log_every: float = 10.0,
        stream=None,
    ):
        self.stream = stream or sys.stderr
        self.total = max(total_bytes, 1)
        self.start = time.perf_counter()
        self.n_rows = self.n_failed = 0
        self.bytes = 0
        self._skipped_bytes = 0
        self.log_every = log_every
        self._last_log = self.start
        mode = {True: "bar", False: "none", None: "auto"}.get(mode, mode)
        if mode not in ("auto", "bar", "log", "none"):
            raise ValueError(f"progress mode {mode!r}: use auto, bar, log or none")
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                unit="B",
                unit_scale=True,
                file=self.stream,
                desc="screen",
                smoothing=0.1,
                dynamic_ncols=True,
            )
        self.quiet = mode == "none"

    def skip(self, nbytes: int) -> None:  # may be called from the reader thread
        self._skipped_bytes += nbytes

    def rate(self) -> float:
        return self.n_rows / max(time.perf_counter() - self.start, 1e-9)

    def update(self, rows: Sequence[dict], nbytes: int) -> None:
        self.n_rows += len(rows)
        self.n_failed += sum(1 for r in rows if r["status"] != "ok")
        skipped, self._skipped_bytes = self._skipped_bytes, 0
        self.bytes += nbytes + skipped
        if self.bar is not None:
            self.bar.update(nbytes + skipped)
            self.bar.set_postfix(
                mol_s=f"{self.rate():.1f}", done=self.n_rows, failed=self.n_failed, refresh=False
            )
        elif not self.quiet and time.perf_counter() - self._last_log >= self.log_every:
            self._last_log = time.perf_counter()
            frac = min(self.bytes / self.total, 1.0)
            elapsed = self._last_log - self.start
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            print(
                f"screen: {self.n_rows} molecules ({self.n_failed} failed), "
                f"{self.rate():.1f} molecules/s, {100 * frac:.1f}% of input, ETA {eta:.0f} s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class ScreenStats:
    out: str
    n_rows: int = 0  # rows written by this run
    n_failed: int = 0
    n_existing: int = 0  # rows already in OUT (skipped)
    elapsed_s: float = 0.0
    interrupted: bool = False
    mode: str = "local"
    extra: dict = field(default_factory=dict)

    @property
    def molecules_per_s(self) -> float:
        return self.n_rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        return (
            f"screen {state}: {self.n_rows} molecules ({self.n_rows - self.n_failed} ok, "
            f"{self.n_failed} failed) in {self.elapsed_s:.2f} s = "
            f"{self.molecules_per_s:.1f} molecules/s [{self.mode}]; "
            f"{self.n_existing} already in {self.out} skipped"
        )


# ---------------------------------------------------------------------------------- local run
_END = object()


def _prefetch(it: Iterator, maxsize: int) -> Iterator:
    """Run ``it`` in a daemon thread (RDKit/numpy parsing overlaps the model), bounded queue."""
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as exc:  # surface reader bugs in the consumer
            q.put(exc)

    threading.Thread(target=produce, daemon=True, name="screen-reader").start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _parse_chunk(raws: list[RawRecord], max_z: int, seed: int) -> list[Record]:
    return [parse_record(r, max_z, seed) for r in raws]


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business


def parallel_parse(
    raws: Iterable[RawRecord], max_z: int, seed: int, n_workers: int, chunk: int = 32
) -> Iterator[Record]:
    """``parse_record`` over ``n_workers`` processes (RDKit conformer generation is the slow
    part of SMILES inputs), in input order, with a bounded number of chunks in flight."""
    import collections
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(
        n_workers, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint
    ) as ex:
        pending: collections.deque = collections.deque()
        for part in chunked(raws, chunk):
            pending.append(ex.submit(_parse_chunk, part, max_z, seed))
            while len(pending) >= 4 * n_workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def default_parse_workers(inputs: Sequence[str]) -> int:
    """Parser processes for a local run: none unless SMILES need 3D conformers."""
    if not any(detect_format(p) == "smiles" for p in inputs):
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _check_inputs(inputs: Sequence[str]) -> None:
    real = [os.path.realpath(p) for p in inputs]
    for path, rp in zip(inputs, real):
        if real.count(rp) > 1:
            raise ValueError(f"input {path} is given more than once")
    for path in inputs:
        detect_format(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input {path} does not exist")


def screen(
    inputs: Sequence[str],
    out: str,
    spec: ScreenSpec = ScreenSpec(),
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    devices: Sequence[str] | None = None,
    shard_size: int = 1024,
    progress: str | bool | None = "auto",
    rows_per_part: int = 100_000,
    parse_workers: int | None = None,
    on_write: Callable[[int], None] | None = None,
) -> ScreenStats:
    """Screen ``inputs`` into ``out``; resumable. ``on_write(k)`` runs after the k-th flushed
    write (tests use it to interrupt a run). KeyboardInterrupt propagates after ``out`` is
    closed in a valid state. ``parse_workers``: parser processes for a local run (default:
    :func:`default_parse_workers`; 0 parses in a thread of this process)."""
    inputs = list(inputs)
    _check_inputs(inputs)
    sink = open_sink(out, columns(spec.relax), rows_per_part)
    stats = ScreenStats(out=out, n_existing=sink.n_existing)
    prog = Progress(sum(os.path.getsize(p) for p in inputs), progress)
    writes = 0

    def write(rows: list[dict], nbytes: int) -> None:
        nonlocal writes
        sink.write(rows)
        prog.update(rows, nbytes)
        writes += 1
        if on_write is not None:
            on_write(writes)

    try:
        raws = iter_raw(inputs, sink.done, on_skip=prog.skip)
        if scheduler or workers or devices:
            from .distributed import run_pool

            stats.mode = run_pool(
                raws,
                spec,
                write,
                scheduler=scheduler,
                workers=workers,
                devices=devices,
                shard_size=shard_size,
                progress=prog,
            )
        else:
            model = get_model(spec)
            prog.start = time.perf_counter()  # throughput excludes loading the model
            max_z = model.config.max_z
            if parse_workers is None:
                parse_workers = default_parse_workers(inputs)
            if parse_workers > 0:
                parsed = parallel_parse(raws, max_z, spec.seed, parse_workers)
            else:
                parsed = (parse_record(r, max_z, spec.seed) for r in raws)
            records = _prefetch(parsed, maxsize=4096)
            for rows, nbytes in evaluate_stream(records, spec):
                write(rows, nbytes)
            stats.mode = f"local {spec.device}, {parse_workers} parser processes"
    except KeyboardInterrupt:
        stats.interrupted = True
        raise
    finally:
        sink.close()
        prog.update([], 0)
        prog.close()
        stats.n_rows, stats.n_failed = prog.n_rows, prog.n_failed
        stats.elapsed_s = time.perf_counter() - prog.start
    return stats
