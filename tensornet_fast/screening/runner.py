"""The screening loop: stream records -> parse/validate -> batch -> evaluate -> append rows.

``screen(...)`` runs in this process (parsing in a background thread, the model in the caller's
thread) or, with ``scheduler``/``workers``/``devices``, fans shards of raw records out to
long-lived model workers (see :mod:`.distributed`) while this process alone writes ``out``.
Either way ``out`` is the single source of truth for resume: ids already in it are skipped.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from .batching import columns
from .progress import Progress, ScreenStats
from .readers import (
    RawRecord,
    Record,
    allowed_species,
    chunked,
    detect_format,
    iter_raw,
    parse_record,
)
from .worker import ScreenSpec, evaluate_stream, get_model
from .writer import open_sink

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
            from .distributed import run_pool  # dask / process pools, imported when asked for

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
            max_z = allowed_species(model.config)
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
