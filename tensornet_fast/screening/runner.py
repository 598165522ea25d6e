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

from ..errors import InputError
from .progress import Progress, ScreenStats
from .readers import (
    RawRecord,
    Record,
    allowed_species,
    check_inputs,
    chunked,
    detect_format,
    iter_raw,
    parse_record,
)
from .signals import ignore_sigint, sigint_blocked, sigint_deferred
from .worker import ScreenSpec, evaluate_stream, get_model
from .writer import open_sink

# ---------------------------------------------------------------------------------- local run
_END = object()


def _prefetch(it: Iterator, maxsize: int, on_stop: Callable[[], None] | None = None) -> Iterator:
    """Run ``it`` in a daemon thread (RDKit/numpy parsing overlaps the model), bounded queue.
    ``on_stop`` runs when the consumer stops early (Ctrl-C), to release ``it``'s workers."""
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
                    break
            else:
                q.put(_END)
        except BaseException as exc:  # surface reader bugs in the consumer
            q.put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # the consumer stopped: let the source release its workers
                close()

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
        if on_stop is not None:
            on_stop()


def _parse_chunk(
    raws: list[RawRecord], max_z: int | tuple[str, ...], seed: int, periodic: bool
) -> list[Record]:
    return [parse_record(r, max_z, seed, periodic) for r in raws]


class ParallelParse:
    """``parse_record`` over ``n_workers`` processes (RDKit conformer generation is the slow
    part of SMILES inputs), in input order, with a bounded number of chunks in flight.
    ``cancel()`` (from any thread) drops the chunks not started and ends the workers, so
    Ctrl-C does not wait for parsing in flight."""

    def __init__(
        self,
        raws: Iterable[RawRecord],
        max_z: int | tuple[str, ...],
        seed: int,
        n_workers: int,
        chunk: int = 32,
        periodic: bool = False,
    ):
        import concurrent.futures as cf
        import multiprocessing as mp

        self.raws, self.args, self.chunk = raws, (max_z, seed, periodic), chunk
        self.n_workers = n_workers
        self.ex = cf.ProcessPoolExecutor(
            n_workers, mp_context=mp.get_context("spawn"), initializer=ignore_sigint
        )

    def cancel(self, terminate: bool = True) -> None:
        # (shutdown forgets the processes: take them first)
        procs = list((getattr(self.ex, "_processes", None) or {}).values())
        self.ex.shutdown(wait=False, cancel_futures=True)
        if terminate:  # the chunks already handed to workers are not waited for either
            for proc in procs:
                proc.terminate()

    def __iter__(self) -> Iterator[Record]:
        import collections

        try:
            pending: collections.deque = collections.deque()
            for part in chunked(self.raws, self.chunk):
                with sigint_blocked():  # workers start on the first submit: blocked from birth
                    pending.append(self.ex.submit(_parse_chunk, part, *self.args))
                while len(pending) >= 4 * self.n_workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:  # done, or the consumer stopped: no new chunks
            self.cancel(terminate=False)


def parallel_parse(
    raws: Iterable[RawRecord],
    max_z: int | tuple[str, ...],
    seed: int,
    n_workers: int,
    chunk: int = 32,
    periodic: bool = False,
) -> Iterator[Record]:
    """Records parsed by :class:`ParallelParse`, in input order."""
    return iter(ParallelParse(raws, max_z, seed, n_workers, chunk, periodic))


def default_parse_workers(inputs: Sequence[str]) -> int:
    """Parser processes for a local run: none unless SMILES need 3D conformers."""
    if not any(detect_format(p) == "smiles" for p in inputs):
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


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
    label: str = "screen",
) -> ScreenStats:
    """Evaluate every record of ``inputs`` into ``out``; resumable. The one pipeline behind
    ``tensornet-fast screen`` and ``tensornet-fast energies`` (``spec`` says which columns).

    Inputs that cannot be read at all, and outputs that are an input, a directory or a file
    this command did not write, raise :class:`~tensornet_fast.InputError` before anything is
    written. ``on_write(k)`` runs after the k-th flushed write (tests use it to interrupt a
    run). KeyboardInterrupt propagates after ``out`` is closed in a valid state.
    ``parse_workers``: parser processes for a local run (default:
    :func:`default_parse_workers`; 0 parses in a thread of this process)."""
    inputs = list(inputs)
    check_inputs(inputs)
    if spec.relax and spec.periodic:
        raise InputError("relaxation is for molecules: periodic inputs cannot be relaxed here")
    prog = Progress(sum(os.path.getsize(p) for p in inputs), progress, desc=label)
    sink = open_sink(out, spec.columns, rows_per_part, inputs=inputs, geometries=spec.relax)
    stats = ScreenStats(out=out, n_existing=sink.n_existing, label=label)
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
            on_stop = None
            if parse_workers > 0:
                parser = ParallelParse(raws, max_z, spec.seed, parse_workers, 32, spec.periodic)
                parsed, on_stop = iter(parser), parser.cancel
            else:
                parsed = (parse_record(r, max_z, spec.seed, spec.periodic) for r in raws)
            records = _prefetch(parsed, maxsize=4096, on_stop=on_stop)
            for rows, nbytes in evaluate_stream(records, spec):
                write(rows, nbytes)
            stats.mode = f"local {spec.device}, {parse_workers} parser processes"
    except KeyboardInterrupt:
        stats.interrupted = True
        raise
    finally:
        with sigint_deferred():
            sink.close()
            prog.update([], 0)
            prog.close()
            stats.n_rows, stats.n_failed = prog.n_rows, prog.n_failed
            stats.n_warned = prog.n_warned
            stats.elapsed_s = time.perf_counter() - prog.start
    return stats
