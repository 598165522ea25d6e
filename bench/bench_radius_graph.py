"""Radius-graph benchmark: ours vs vesin / matscipy / ASE on periodic water boxes.

Full neighbour list (both directions) with vectors and distances, 5 A cutoff, water density
(0.0334 molecules / A^3, ~52 neighbours per atom), 1k to 1M atoms. Appends rows to the results
CSV (bench/harness.py columns) with benchmark = "radius_graph".

    python -m bench.bench_radius_graph [--tiny] [--csv PATH] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

from bench import harness

CUTOFF = 5.0
WATER_DENSITY = 0.0334  # molecules / A^3 (1 g / cm^3)
SIZES = [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
TINY_SIZES = [1_000, 3_000]
# Bytes per directed edge of a full fp64 list with i, j, shifts, vectors and distances
# (8 + 8 + 24 + 24 + 8), and edges per atom at water density within 5 A.
BYTES_PER_EDGE = 72
EDGES_PER_ATOM = 53
# ASE's pure-Python list costs ~20 us / atom: beyond this size it would dominate the run.
ASE_MAX_ATOMS = 30_000
# matscipy is single-threaded and ~vesin's speed; 1M atoms would add minutes and ~4 GB.
MATSCIPY_MAX_ATOMS = 300_000


def water_system(n_atoms: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Periodic cubic box of rigid, randomly rotated water molecules on a grid (O-H 0.9572 A,
    H-O-H 104.52 deg). n_atoms is rounded down to a multiple of 3. Returns (pos [N, 3], box)."""
    rng = np.random.default_rng(seed)
    n_mol = max(1, n_atoms // 3)
    length = (n_mol / WATER_DENSITY) ** (1.0 / 3.0)
    per_axis = math.ceil(n_mol ** (1.0 / 3.0) - 1e-9)
    grid = np.stack(np.meshgrid(*[np.arange(per_axis)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centers = (grid[:n_mol] + 0.5) * (length / per_axis)
    centers += rng.normal(scale=0.1, size=centers.shape)
    angle = math.radians(104.52)
    body = 0.9572 * np.array(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [math.cos(angle), math.sin(angle), 0.0]]
    )
    q, r = np.linalg.qr(rng.normal(size=(n_mol, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # uniform random rotations
    pos = centers[:, None, :] + np.einsum("ka,mba->mkb", body, q)
    return np.ascontiguousarray(pos.reshape(-1, 3)), np.eye(3) * length


def _ours(pos: np.ndarray, box: np.ndarray, device: str):
    from tensornet_fast.neighbors import compiled_available, radius_graph_full

    backend = "compiled" if compiled_available() else "reference"
    p = torch.tensor(pos, device=device)
    b = torch.tensor(box, device=device)

    def run(_k=0):
        return radius_graph_full(p, CUTOFF, box=b, backend=backend)

    return run, lambda out: out.num_edges, backend


def _vesin(pos, box, device):
    import vesin

    calc = vesin.NeighborList(cutoff=CUTOFF, full_list=True)

    def run(_k=0):
        return calc.compute(pos, box, True, "ijSDd")

    return run, lambda out: len(out[0]), f"vesin {vesin.__version__}"


def _matscipy(pos, box, device):
    import matscipy
    from matscipy.neighbours import neighbour_list

    def run(_k=0):
        return neighbour_list("ijSDd", positions=pos, cell=box, pbc=[True] * 3, cutoff=CUTOFF)

    return run, lambda out: len(out[0]), f"matscipy {matscipy.__version__}"


def _ase(pos, box, device):
    import ase
    from ase.neighborlist import neighbor_list

    atoms = ase.Atoms(numbers=np.ones(len(pos), dtype=int), positions=pos, cell=box, pbc=True)

    def run(_k=0):
        return neighbor_list("ijSDd", atoms, CUTOFF)

    return run, lambda out: len(out[0]), f"ase {ase.__version__}"


IMPLEMENTATIONS = {"ours": _ours, "vesin": _vesin, "matscipy": _matscipy, "ase": _ase}


def _mem_available_bytes() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-long CI run (1k, 3k atoms)")
    ap.add_argument("--csv", default=harness.RESULTS_CSV)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--impl", default="ours,vesin,matscipy,ase")
    args = ap.parse_args(argv)
    sizes = args.sizes or (TINY_SIZES if args.tiny else SIZES)
    impls = [x for x in args.impl.split(",") if x]
    env = harness.environment(args.device)
    rows = []
    for n in sizes:
        pos, box = water_system(n)
        n = len(pos)
        need = 2.5 * BYTES_PER_EDGE * EDGES_PER_ATOM * n  # output + search buffers + a peer's copy
        by_impl = {}
        for name in impls:
            if args.device != "cpu" and name != "ours":
                continue  # the CPU peers only make sense on CPU
            if (name == "ase" and n > ASE_MAX_ATOMS) or (
                name == "matscipy" and n > MATSCIPY_MAX_ATOMS
            ):
                continue
            if need > 0.8 * _mem_available_bytes():
                print(f"skip {name} at {n} atoms: needs ~{need / 2**30:.1f} GiB", file=sys.stderr)
                continue
            try:
                run, edges_of, version = IMPLEMENTATIONS[name](pos, box, args.device)
            except ImportError as err:
                print(f"skip {name}: {err}", file=sys.stderr)
                continue
            repeats = 3 if args.tiny else (3 if n >= 300_000 else (5 if n >= 100_000 else 10))
            out = run()
            edges = edges_of(out)
            del out
            cpu: list[float] = []

            def timed(k, run=run, cpu=cpu):
                c0 = time.process_time()
                run(k)
                cpu.append(time.process_time() - c0)

            t = harness.time_call(
                timed, args.device, repeats=repeats, warmup=1, max_seconds=5 if args.tiny else 60
            )
            cpu_s = statistics.median(cpu[1:] or cpu)  # without the warm-up call
            peak = harness.peak_memory_mb(run, args.device)
            by_impl[name] = t["median_s"]
            # CPU seconds (all threads) and the load average tell how much a busy machine
            # inflated the wall-clock numbers.
            notes = [
                version,
                f"cutoff {CUTOFF} A",
                f"cpu_s {cpu_s:.4f}",
                f"loadavg {os.getloadavg()[0]:.1f}",
                "peak_mem: growth of process max RSS (0 when not a new high)",
            ]
            if name != "vesin" and "vesin" in by_impl:
                notes.append(f"{by_impl['vesin'] / t['median_s']:.2f}x vesin")
            rows.append(
                {
                    **env,
                    "benchmark": "radius_graph",
                    "implementation": name,
                    "backend": version if name == "ours" else "",
                    "mode": "full list + vectors + distances",
                    "dtype": "float64",
                    "system": f"water_pbc_{n}",
                    "atoms": n,
                    "edges": edges,
                    "batch": 1,
                    **t,
                    "ns_per_atom": t["median_s"] / n * 1e9,
                    "peak_mem_mb": round(peak, 1),
                    "notes": "; ".join(notes),
                }
            )
            print(
                f"{name:9s} {n:8d} atoms {edges:10d} edges median {t['median_s'] * 1e3:9.2f} ms "
                f"{t['median_s'] / n * 1e9:8.1f} ns/atom",
                file=sys.stderr,
                flush=True,
            )
        if "ours" in by_impl and "vesin" in by_impl:
            print(
                f"   ours vs vesin at {n}: {by_impl['vesin'] / by_impl['ours']:.2f}x",
                file=sys.stderr,
                flush=True,
            )
    harness.append_rows(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
