"""Per-stage breakdown of one energy + forces step of our reference backend: neighbour list,
radial basis, embedding, each interaction layer, output head, force backward.

Stages are timed by hand (synchronised perf_counter around each, on rotated inputs) while
running the reference backend's own functions in the order ``reference.atomic_energies`` runs
them, with autograd on, so the backward stage is the real force backward of that forward.
Rows: ``benchmark="model_stage"``, stage name in ``notes`` (``stage=embedding``).

  python -m bench.bench_stages --sizes 192,648,1536
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from bench import harness, roofline, systems
from bench.bench_model import make_checkpoints


def _stage_times(model, z, pos, batch, box, device) -> dict[str, float]:
    from tensornet_fast.backends.reference import math as reference
    from tensornet_fast.backends.shared.radial import cosine_cutoff, radial_basis, scalar_head

    cfg = model.config
    rep = model.representation_model
    dev = torch.device(device)
    times: dict[str, float] = {}
    clock = [time.perf_counter()]

    def mark(name: str) -> None:
        harness._sync(dev)
        now = time.perf_counter()
        times[name] = now - clock[0]
        clock[0] = now

    with torch.enable_grad():
        leaf = pos.detach().requires_grad_(True)
        harness._sync(dev)
        clock[0] = time.perf_counter()
        nl = model.neighbor_list(leaf, batch, box)
        mark("neighbour list")
        i, j = nl.edge_index
        is_self = i == j
        safe = torch.where(is_self, torch.ones_like(nl.edge_dist), nl.edge_dist)
        unit = torch.where(
            is_self[:, None], torch.zeros_like(nl.edge_vec), nl.edge_vec / safe[:, None]
        )
        rbf = radial_basis(rep, cfg, nl.edge_dist)
        phi = cosine_cutoff(nl.edge_dist, cfg.cutoff_lower, cfg.cutoff_upper)
        mark("radial basis")
        x = reference.embedding(rep.tensor_embedding, cfg, z, nl.edge_index, unit, phi, rbf)
        mark("embedding")
        charge = torch.ones(z.shape[0], dtype=pos.dtype, device=pos.device)
        for k, layer in enumerate(rep.layers):
            x = reference.interaction(layer, cfg, x, nl.edge_index, rbf, phi, charge)
            mark(f"interaction {k}")
        eps = scalar_head(
            model.output_model.output_network.layers, cfg, reference.atomic_features(rep, cfg, x)
        )
        energy = (eps * model.std).sum() + model.mean  # one molecule; priors left out
        mark("output")
        (grad,) = torch.autograd.grad(energy.sum(), leaf)
        mark("backward (forces)")
    times["total"] = sum(times.values())
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_stages", description=__doc__.split("\n")[0]
    )
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--csv", default=harness.RESULTS_CSV)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="192,648", help="water box atoms")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--rbf", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.tiny:
        args.sizes, args.features, args.rbf, args.layers, args.repeats = "192", 16, 8, 1, 2
    from tensornet_fast import load_model

    model_key = (args.features, args.rbf, args.layers, args.cutoff)
    tag = roofline.model_tag(*model_key)
    env = harness.environment(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoints([model_key], tmp)[tag]
        model = load_model(ckpt, device=args.device, backend="reference")
    dev = torch.device(args.device)
    for size in (int(s) for s in args.sizes.split(",")):
        system = systems.water_box(size)
        z = torch.as_tensor(system.z, device=dev)
        batch = torch.as_tensor(system.batch, device=dev)
        box = torch.as_tensor(system.box, dtype=torch.float32, device=dev)
        rng = np.random.default_rng(99)
        inputs = [
            torch.as_tensor(
                system.pos + rng.normal(scale=0.01, size=system.pos.shape),
                dtype=torch.float32,
                device=dev,
            )
            for _ in range(args.repeats + 1)
        ]
        t0 = time.perf_counter()
        _stage_times(model, z, inputs[-1], batch, box, dev)  # warm-up
        warm = time.perf_counter() - t0
        samples = [_stage_times(model, z, inputs[k], batch, box, dev) for k in range(args.repeats)]
        edges = model.neighbor_list(inputs[0], batch, box).num_edges
        for stage in samples[0]:
            ts = sorted(s[stage] for s in samples)
            q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
            med = statistics.median(ts)
            rows.append(
                {
                    **env,
                    "benchmark": "model_stage",
                    "implementation": "tensornet_fast",
                    "backend": "reference",
                    "mode": "exact",
                    "dtype": "float32",
                    "system": system.name,
                    "atoms": system.atoms,
                    "edges": edges,
                    "batch": 1,
                    "warmup_s": warm,
                    "median_s": med,
                    "p20_s": q[0],
                    "p80_s": q[3],
                    "repeats": len(ts),
                    "ns_per_atom": med / system.atoms * 1e9,
                    "notes": f"model={tag};stage={stage}" + (";tiny=1" if args.tiny else ""),
                }
            )
        total = statistics.median(s["total"] for s in samples)
        print(
            f"{system.name} {tag}: "
            + ", ".join(
                f"{r['notes'].split('stage=')[1].split(';')[0]} {100 * r['median_s'] / total:.0f}%"
                for r in rows
                if r["system"] == system.name and "stage=total" not in r["notes"]
            ),
            file=sys.stderr,
        )
    harness.append_rows(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
