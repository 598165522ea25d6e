"""Scale-out: shards of raw records go to long-lived model workers; results come back here.

* Dask distributed: ``scheduler="tcp://host:8786"`` (an existing cluster, e.g. from
  dask-jobqueue on Slurm/PBS or dask-cuda's one-worker-per-GPU) or ``workers=N`` (a
  ``LocalCluster`` bound to 127.0.0.1). Each worker process loads the model once (a per-process
  cache in :func:`.worker.get_model`) and keeps it for every shard it is given.
* No scheduler, one process per device: ``devices=["cuda:0", "cuda:1"]`` (``["all"]`` = every
  visible GPU; ``["cpu", "cpu"]`` exercises it on a CPU machine).

Only this process writes ``out`` (results are a few numbers per molecule), so resume, Ctrl-C and
the file format are the same as a local run. Shards in flight are bounded, so a library of any
size streams through.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Sequence

from .progress import Progress
from .readers import RawRecord, chunked
from .signals import ignore_sigint, sigint_blocked
from .worker import ScreenSpec, process_shard


def resolve_devices(devices: Sequence[str]) -> list[str]:
    if list(devices) == ["all"]:
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError("--devices all: no CUDA device visible")
        return [f"cuda:{k}" for k in range(n)]
    return list(devices)


def _init_process(threads: int | None) -> None:
    import torch

    ignore_sigint()
    if threads:
        torch.set_num_threads(threads)


class _ProcessPool:
    """One single-process executor per device (spawned, so CUDA initialises cleanly)."""

    def __init__(self, devices: Sequence[str], spec: ScreenSpec):
        ctx = mp.get_context("spawn")
        threads = spec.threads or max(1, (os.cpu_count() or 1) // len(devices))
        self.slots = [
            (
                cf.ProcessPoolExecutor(
                    1, mp_context=ctx, initializer=_init_process, initargs=(threads,)
                ),
                dataclasses.replace(spec, device=d, threads=threads),
            )
            for d in devices
        ]
        self.load = [0] * len(self.slots)
        self.where: dict[cf.Future, int] = {}
        self.n_workers = len(self.slots)

    def submit(self, shard: list[RawRecord]) -> cf.Future:
        k = min(range(len(self.slots)), key=self.load.__getitem__)
        ex, spec = self.slots[k]
        with sigint_blocked():  # a worker starts on its first submit: Ctrl-C is ours alone
            fut = ex.submit(process_shard, shard, spec)
        self.load[k] += 1
        self.where[fut] = k
        return fut

    def wait_first(self, futures: Iterable) -> set:
        done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
        for fut in done:
            self.load[self.where.pop(fut)] -= 1
        return done

    def close(self, cancel: bool = False) -> None:
        for ex, _ in self.slots:
            ex.shutdown(wait=not cancel, cancel_futures=cancel)


class _DaskPool:
    def __init__(self, spec: ScreenSpec, scheduler: str | None, workers: int | None):
        from distributed import Client, LocalCluster

        self.cluster = None
        if not scheduler and spec.device.startswith("cuda"):
            import warnings

            import torch

            if torch.cuda.device_count() > 1:
                warnings.warn(
                    "--workers with a CUDA device puts every worker on the same GPU; use "
                    "--devices all (one process per GPU) or a dask-cuda cluster via --scheduler",
                    stacklevel=2,
                )
        if scheduler:
            self.client = Client(scheduler)
            self.spec = spec
        else:
            import dask

            threads = spec.threads or max(1, (os.cpu_count() or 1) // workers)
            # no MALLOC_TRIM_THRESHOLD_ for model workers (see runner.undo_malloc_trim)
            with (
                dask.config.set(
                    {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
                ),
                sigint_blocked(),  # worker processes never see Ctrl-C: we stop them
            ):
                self.cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
            self.client = Client(self.cluster)
            self.spec = dataclasses.replace(spec, threads=threads)
        n_seen = len(self.client.scheduler_info().get("workers", {}))
        self.n_workers = max(1, n_seen or (workers or 1))

    def submit(self, shard: list[RawRecord]):
        return self.client.submit(process_shard, shard, self.spec, pure=False)

    def wait_first(self, futures: Iterable) -> set:
        from distributed import wait

        return set(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def close(self, cancel: bool = False) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def run_pool(
    raws: Iterable[RawRecord],
    spec: ScreenSpec,
    write: Callable[[list[dict], int], None],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    devices: Sequence[str] | None = None,
    shard_size: int = 1024,
    progress: Progress | None = None,
) -> str:
    """Process every raw record on workers, handing each finished shard's rows to ``write``.
    Returns a description of the mode."""
    if devices:
        devices = resolve_devices(devices)
        pool = _ProcessPool(devices, spec)
        mode = f"processes on {', '.join(devices)}"
    else:
        pool = _DaskPool(spec, scheduler, workers or 1)
        mode = f"dask {scheduler or 'LocalCluster 127.0.0.1'} x{pool.n_workers}"
    if progress is not None:
        progress.start = time.perf_counter()  # throughput excludes cluster start-up
    max_inflight = 2 * pool.n_workers
    inflight: dict = {}
    ok = False
    try:

        def drain() -> None:
            for fut in pool.wait_first(inflight):
                nbytes = inflight.pop(fut)
                write(fut.result(), nbytes)

        for shard in chunked(raws, shard_size):
            while len(inflight) >= max_inflight:
                drain()
            inflight[pool.submit(shard)] = sum(r.nbytes for r in shard)
        while inflight:
            drain()
        ok = True
    finally:
        pool.close(cancel=not ok)
    return mode
