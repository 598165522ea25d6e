"""How many threads one call of the cpu backend runs with: never more than torch's setting
(``torch.set_num_threads``), fewer where more would be slower.

* **Small systems run on one thread.** Every OpenMP parallel region wakes the sleeping pool
  threads (``OMP_WAIT_POLICY=PASSIVE``, which ``tensornet_fast`` sets: ~15-50 us per region on
  the 2-core VMs); below ``SMALL_SYSTEM_ATOMS`` atoms the work per region is smaller than the
  wake-up. 22 atoms (bench/bench_latency.py): 2 threads were slower than 1 before this rule.
* **Busy machines get fewer threads.** The kernels split atoms evenly over the threads and wait
  at barriers: a thread that shares its core with another runnable process makes every region
  wait for it (64 g2 molecules with a CPU-bound process beside them on 2 cores: 2 threads 50
  ms, 1 thread 34 ms). The number of runnable tasks of the machine (``/proc/loadavg``, read at
  most every ``LOAD_PERIOD_S``) minus this call's own thread gives the cores in use by others;
  a call uses at most the remaining ones (at least 1).

``TENSORNET_FAST_ADAPTIVE_THREADS=0`` (read once per process) turns both rules off: every call
then runs with torch's thread count.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

# Below this many atoms a call runs on one thread (measured crossover, bench/bench_latency.py).
SMALL_SYSTEM_ATOMS = 96
LOAD_PERIOD_S = 0.05  # a fresh /proc/loadavg reading at most every 50 ms (~10-80 us each)
_ENABLED = os.environ.get("TENSORNET_FAST_ADAPTIVE_THREADS", "1") != "0"
_LOAD = {"t": -1.0, "busy": 0}


def _busy_cores() -> int:
    """Runnable tasks of the machine besides the calling thread (0 where unknown)."""
    now = time.monotonic()
    if now - _LOAD["t"] > LOAD_PERIOD_S:
        _LOAD["t"] = now
        try:
            with open("/proc/loadavg", "rb") as fh:
                running = int(fh.read().split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            running = 1
        _LOAD["busy"] = max(0, running - 1)
    return _LOAD["busy"]


def call_threads(n_atoms: int) -> int:
    """The thread count for a call on ``n_atoms`` atoms (<= torch.get_num_threads())."""
    want = torch.get_num_threads()
    if want <= 1 or not _ENABLED:
        return want
    if n_atoms < SMALL_SYSTEM_ATOMS:
        return 1
    cores = os.cpu_count() or want
    return max(1, min(want, cores - _busy_cores()))


def set_adaptive(enabled: bool) -> bool:
    """Turn both rules on or off for this process (as ``TENSORNET_FAST_ADAPTIVE_THREADS`` does
    at import); returns the previous setting. Benchmarks that compare against a host with a
    fixed thread count (bench/bench_lammps.py) turn them off."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


class _Threads:
    __slots__ = ("n", "previous")

    def __init__(self, n: int, previous: int):
        self.n, self.previous = n, previous

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


def threads_for(n_atoms: int):
    """A context manager running its block with ``call_threads(n_atoms)`` threads (~1 us when
    the count changes, nothing when it does not)."""
    previous = torch.get_num_threads()
    n = call_threads(n_atoms)
    if n == previous:
        return contextlib.nullcontext()
    return _Threads(n, previous)
