"""OpenMM step time vs a direct model call on the same system (the OpenMM-ML plugin's overhead).

Implementations, in this process, timed in interleaved blocks (bundled model, float32, energy +
forces; the same thread count for all):
- ``model``: the plain ``model(z, pos, box=...)`` call (neighbour search every call);
- ``md-step``: ``tensornet_fast.md.MDStep`` (what the plugin runs: Verlet candidates cut to the
  exact pairs, then the cpu kernels);
- ``openmm``: ``MLPotential("tensornet_fast")`` system, one ``VerletIntegrator.step`` per call
  (Reference platform: the ML force's PythonForce call, unit conversion, the integration).

Systems: biphenyl (22 atoms) and a periodic water box (~200 atoms). ``notes`` record the
overhead: openmm minus model (and minus md-step), absolute and relative.

    python -m bench.bench_openmm [--tiny] [--csv PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import harness, systems  # noqa: E402


def _topology(z, box):
    from openmm import app, unit

    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("MOL", chain)
    for k, zi in enumerate(z):
        top.addAtom(f"A{k}", app.Element.getByAtomicNumber(int(zi)), res)
    if box is not None:
        top.setPeriodicBoxVectors(np.asarray(box) * 0.1 * unit.nanometer)
    return top


def _block(fn, calls: int) -> list[float]:
    out = []
    for k in range(calls):
        t = time.perf_counter()
        fn(k)
        out.append(time.perf_counter() - t)
    return out


def run_system(system, args, env) -> list[dict]:
    import openmm
    from openmmml import MLPotential

    import tensornet_fast as tnf
    from tensornet_fast.md import MDStep

    z = torch.as_tensor(system.z)
    pos = torch.as_tensor(system.pos, dtype=torch.float32)
    box = None if system.box is None else torch.as_tensor(system.box, dtype=torch.float32)
    model = tnf.load_model("default")
    step = MDStep(model, z, pos, box=box, skin=0.5)
    gen = torch.Generator().manual_seed(0)
    inputs = [pos + 0.01 * torch.randn(pos.shape, generator=gen) for _ in range(20)]

    potential = MLPotential("tensornet_fast", modelPath="default")
    omm_system = potential.createSystem(_topology(system.z, system.box), removeCMMotion=False)
    integrator = openmm.VerletIntegrator(1e-5)  # 0.01 fs: positions stay within the skin
    platform = openmm.Platform.getPlatformByName("Reference")
    context = openmm.Context(omm_system, integrator, platform)
    if system.box is not None:
        context.setPeriodicBoxVectors(*(np.asarray(system.box) * 0.1))
    context.setPositions(np.asarray(system.pos) * 0.1)

    impls = {
        "model": lambda k: float(model(z, inputs[k % 20], box=box)[0].sum()),
        "md-step": lambda k: float(step(inputs[k % 20])[0].sum()),
        "openmm": lambda k: integrator.step(1),
    }
    times = {name: [] for name in impls}
    for fn in impls.values():
        _block(fn, 3)
    calls = 5 if args.tiny else 40
    for r in range(args.rounds):
        names = list(impls)
        for name in names[r % 3 :] + names[: r % 3]:
            times[name] += _block(impls[name], calls)
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    over_model = med["openmm"] - med["model"]
    over_step = med["openmm"] - med["md-step"]
    goal = 0.1 * med["model"] + 1e-4
    summary = (
        f"overhead_vs_model_ms={over_model * 1e3:.3f};"
        f"overhead_vs_model_rel={over_model / med['model']:.3f};"
        f"overhead_vs_mdstep_ms={over_step * 1e3:.3f};"
        f"goal_ms={goal * 1e3:.3f};goal_met={over_model <= goal}"
    )
    rows = []
    for name, ts in times.items():
        ts = sorted(ts)
        q = [ts[int(f * (len(ts) - 1))] for f in (0.2, 0.5, 0.8)]
        print(f"openmm {system.name:16s} {name:8s} median {q[1] * 1e3:8.3f} ms", flush=True)
        rows.append(
            dict(
                env,
                benchmark="openmm",
                implementation="openmm+tensornet_fast" if name == "openmm" else "tensornet_fast",
                backend="cpu",
                mode=name,
                dtype="float32",
                system=system.name,
                atoms=system.atoms,
                batch=1,
                median_s=q[1],
                p20_s=q[0],
                p80_s=q[2],
                repeats=len(ts),
                ns_per_atom=q[1] / system.atoms * 1e9,
                notes=f"model=L2-F48-K32-rc5;openmm={openmm.__version__};platform=Reference;"
                + summary
                + f";loadavg={harness.load_average()}"
                + (";tiny=1" if args.tiny else ""),
            )
        )
    print("  " + summary.replace(";", "  "), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI)")
    parser.add_argument("--csv", default=None, help="results CSV (default bench/results)")
    parser.add_argument("--device", default="cpu", help="cpu only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (6)")
    args = parser.parse_args(argv)
    try:
        import openmm  # noqa: F401
        import openmmml  # noqa: F401
    except ImportError as exc:
        print(f"bench_openmm skipped: {exc} (pip install openmm==8.6.1 openmmml==1.8)")
        return 0
    from tensornet_fast.integrations.openmm import register

    register()  # a source checkout without the entry point installed
    torch.set_num_threads(args.threads or 1)
    args.rounds = args.rounds or (2 if args.tiny else 6)
    env = harness.environment("cpu")
    rows = run_system(systems.single_molecule(), args, env)
    rows += run_system(systems.water_box(81 if args.tiny else 192), args, env)
    harness.append_rows(rows, args.csv or harness.RESULTS_CSV)
    return 0


if __name__ == "__main__":
    sys.exit(main())
