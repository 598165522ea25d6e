"""Shared benchmark plumbing: environment capture, timing done right, CSV rows.

Every benchmark appends rows with the columns of ``COLUMNS`` to a CSV (default
``bench/results/results.csv``); plots are regenerated from that file, never from memory.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_CSV = os.path.join(HERE, "results", "results.csv")

COLUMNS = [
    "date",
    "git_sha",
    "device",
    "torch",
    "triton",
    "threads",
    "benchmark",
    "implementation",
    "backend",
    "mode",
    "dtype",
    "system",
    "atoms",
    "edges",
    "batch",
    "warmup_s",
    "median_s",
    "p20_s",
    "p80_s",
    "repeats",
    "ns_per_atom",
    "peak_mem_mb",
    "gbps",
    "gflops",
    "notes",
]


def git_sha() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=HERE,
            stderr=subprocess.DEVNULL,
            text=True,
        ).strip()
    except Exception:
        return "unknown"


def device_name(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    isa = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
                    break
    except OSError:
        pass
    # The vector width names the host apart where the model name does not: "AMD EPYC" was an
    # AVX2-only Zen 3 and an AVX-512 Zen 5 on this project's VMs (rows before 2026-12-02 carry
    # no ISA), and the cpu backend's kernels and ratios differ between them.
    return f"CPU {cpu} ({os.cpu_count()} cores{', ' + isa if isa else ''})"


def load_average() -> str:
    """The host's 1-minute load average and runnable / all tasks ("5.82,3/112"), for notes:
    on the shared 2-core VMs it says how far absolute times are inflated."""
    try:
        with open("/proc/loadavg") as fh:
            parts = fh.read().split()
        return f"{parts[0]},{parts[3]}"
    except (OSError, IndexError):
        return "unknown"


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = ""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_sha": git_sha(),
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "threads": torch.get_num_threads(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[int], Any],
    device: str | torch.device = "cpu",
    repeats: int = 10,
    warmup: int = 1,
    max_seconds: float = 60.0,
) -> dict[str, float]:
    """Time ``fn(k)`` (k = repeat index, so callers can rotate inputs). Warm-up calls are timed
    separately (compile / JIT / table builds land there). Returns seconds."""
    device = torch.device(device)
    _sync(device)
    t0 = time.perf_counter()
    for k in range(warmup):
        fn(k)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    times: list[float] = []
    budget_start = time.perf_counter()
    for k in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn(k)
        _sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - budget_start > max_seconds and len(times) >= 3:
            break
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return {
        "warmup_s": warmup_s,
        "median_s": statistics.median(times),
        "p20_s": q[0],
        "p80_s": q[3],
        "repeats": len(times),
    }


def peak_memory_mb(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Peak memory of one call: CUDA allocator peak on GPU; on CPU the growth of the process's
    peak RSS (ru_maxrss), which only sees new highs -- run the largest case last or in a
    fresh process when comparing."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024.0


def append_rows(rows: Iterable[Mapping[str, Any]], path: str = RESULTS_CSV) -> None:
    rows = list(rows)
    if not rows:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="raise")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})


def read_rows(path: str = RESULTS_CSV) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
