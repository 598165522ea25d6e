"""MD step latency for one small molecule (biphenyl, 22 atoms): energy + forces per step.

Implementations, all in this process on the same checkpoint (the bundled default model, TensorNet
2L F=48 r_c=5, float32) and the same inputs (each timed call gets positions displaced by 0.01 A
noise, as consecutive MD steps are):
- ``model:<backend>``: the plain ``model(z, pos)`` call (neighbour list rebuilt every call),
  for every available backend;
- ``md-step:eager``: ``tensornet_fast.md.MDStep`` without graph capture (static-capacity Verlet
  list reused within the skin, fixed shapes, the traceable reference math);
- ``md-step:cuda-graph``: the same step captured in a CUDA graph and replayed (CUDA only);
- ``torchmd-net:default``: torchmd-net 3.1 as installed (Warp kernels when warp-lang is), when
  it imports; ``notes`` records its path.

    python -m bench.bench_md_step [--tiny] [--csv PATH] [--device cpu|cuda] [--repeats N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import harness, systems  # noqa: E402


def _torchmdnet(device: str):
    import warnings

    warnings.simplefilter("ignore")
    import torchmdnet.models.tensornet as tn
    from torchmdnet.models.model import load_model as tmdn_load

    from tensornet_fast.model import NAMED_MODELS

    model = tmdn_load(NAMED_MODELS["default"], device=device, derivative=True).eval()
    return model, f"tmdn_opt={tn.OPT}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI)")
    parser.add_argument("--csv", default=None, help="results CSV (default bench/results)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 200)")
    parser.add_argument("--skin", type=float, default=0.5, help="MDStep Verlet skin (A)")
    args = parser.parse_args(argv)

    import tensornet_fast as tnf
    from tensornet_fast.md import MDStep

    device = torch.device(args.device)
    repeats = args.repeats or (5 if args.tiny else 200)
    system = systems.single_molecule()
    z = torch.as_tensor(system.z, device=device)
    base = torch.as_tensor(system.pos, dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(0)
    inputs = [
        base + 0.01 * torch.randn(base.shape, generator=gen).to(device)
        for _ in range(min(repeats, 50))
    ]
    env = harness.environment(device)
    tiny = "tiny=1" if args.tiny else ""
    rows = []

    def record(impl: str, backend: str, mode: str, fn, edges, notes: str = "") -> None:
        def call(k: int) -> None:
            energy, forces = fn(inputs[k % len(inputs)])
            if device.type != "cuda":
                float(energy.sum())  # the result exists

        res = harness.time_call(call, device, repeats=repeats, warmup=3, max_seconds=30.0)
        rows.append(
            dict(
                env,
                benchmark="md_step",
                implementation=impl,
                backend=backend,
                mode=mode,
                dtype="float32",
                system=system.name,
                atoms=system.atoms,
                edges=edges,
                batch=1,
                ns_per_atom=res["median_s"] / system.atoms * 1e9,
                notes=";".join(
                    x for x in ("model=L2-F48-K32-rc5", "scenario=single", notes, tiny) if x
                ),
                **res,
            )
        )
        print(f"{impl:22s} {backend:10s} median {res['median_s'] * 1e3:8.3f} ms", flush=True)

    edges = ""
    for backend in tnf.available_backends():
        model = tnf.load_model("default", device=device, backend=backend)
        if model.backend != backend:
            continue  # e.g. the cpu backend on a CUDA device
        edges = model.neighbor_list(base, torch.zeros_like(z), None).num_edges
        record("model", backend, "eager", lambda p, m=model: m(z, p), edges)

    model = tnf.load_model("default", device=device, backend="reference")
    step = MDStep(model, z, base, skin=args.skin, cuda_graph=False)
    record(
        "md-step",
        "reference",
        "eager",
        step,
        step.capacity,
        f"skin={args.skin};capacity={step.capacity}",
    )
    if device.type == "cuda":
        gstep = MDStep(model, z, base, skin=args.skin, cuda_graph=True)
        record(
            "md-step",
            "reference",
            "cuda-graph",
            gstep,
            gstep.capacity,
            f"skin={args.skin};capacity={gstep.capacity}",
        )
    if importlib.util.find_spec("torchmdnet") is not None:
        try:
            tmdn, notes = _torchmdnet(args.device)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            print(f"torchmd-net skipped: {exc}")
        else:
            record("torchmd-net", "default", "eager", lambda p: tmdn(z, p), edges, notes)
    harness.append_rows(rows, args.csv or harness.RESULTS_CSV)
    return 0


if __name__ == "__main__":
    sys.exit(main())
