"""End-to-end energy + forces: tensornet_fast (every available backend) against torchmd-net 3.1's
default path (Warp kernels) and its pure-PyTorch path, on the same checkpoint and inputs.

Each (implementation, case) runs in a fresh worker process by default (``--isolate case``), so
the peak-memory column is that one call's RSS growth and torchmd-net's two paths never share a
process: the pure path is selected by importing tests/oracle.py (which switches torchmd-net
globally); the default-path worker never imports it and records ``tmdn_opt=True`` (Warp active).

Timing: the first call is the warm-up (its time is ``warmup_s``, its RSS growth ``peak_mem_mb``);
then ``--repeats`` timed calls, each on a different input (positions displaced by 0.01 Å noise,
so no implementation can reuse a neighbour list or a cached result); median and p20/p80.

  python -m bench.bench_model --scenario water --sizes 192,648,1536 --layers 1,2 --cutoffs 5
  python -m bench.bench_model --tiny --csv /tmp/t.csv
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

from bench import harness, roofline, systems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
PEERS = ("torchmd-net:default", "torchmd-net:pure")


def default_implementations(device: str = "cpu") -> list[str]:
    """Our backends that serve this device (``<backend>/tabulated`` = tabulated filters) and the
    torchmd-net peers. The Triton interpreter on CPU is a test vehicle, not a benchmark."""
    from tensornet_fast import available_backends

    names = available_backends()
    if str(device).startswith("cuda"):
        names = [b for b in names if b != "cpu"]
        if "triton" in names:
            names.append("triton/tabulated")
    else:
        names = [b for b in names if b != "triton"]
    ours = [f"tensornet_fast:{b}" for b in names]
    peers = []
    if importlib.util.find_spec("torchmdnet") is not None:
        # torchmd-net's default path IS its Warp path when warp-lang is installed; without warp
        # its default falls back to the pure functions, which would be the same peer twice.
        if importlib.util.find_spec("warp") is not None:
            peers.append("torchmd-net:default")
        peers.append("torchmd-net:pure")
    return ours + peers


def make_checkpoints(models: list[tuple[int, int, int, float]], folder: str) -> dict[str, str]:
    """Random-weight torchmd-net checkpoints (written by torchmd-net itself, tests/oracle.py)."""
    sys.path.insert(0, TESTS)
    from oracle import make_checkpoint  # noqa: E402  (switches torchmd-net in THIS process only)

    out = {}
    for F, K, L, rc in models:
        tag = roofline.model_tag(F, K, L, rc)
        path = os.path.join(folder, f"{tag}.ckpt")
        if not os.path.exists(path):
            make_checkpoint(
                path,
                seed=7,
                embedding_dimension=F,
                num_rbf=K,
                num_layers=L,
                cutoff_upper=rc,
                max_z=20,
            )
        out[tag] = path
    return out


# ------------------------------------------------------------------ worker (fresh process)


def _load(impl: str, ckpt: str, device: str, max_neighbors: int):
    """-> (callable(z, pos, batch, box) -> (energy, forces), notes)."""
    family, backend = impl.split(":")
    if family == "tensornet_fast":
        from tensornet_fast import load_model

        backend, _, mode = backend.partition("/")
        model = load_model(ckpt, device=device, backend=backend, filter_mode=mode or "exact")
        return (lambda z, p, b, box: model(z, p, batch=b, box=box)), f"backend={model.backend}"
    import warnings

    warnings.simplefilter("ignore")
    if backend == "pure":
        sys.path.insert(0, TESTS)
        import oracle  # noqa: F401  switches torchmd-net to its pure-PyTorch functions
    import torchmdnet.models.tensornet as tn
    from torchmdnet.models.model import load_model as tmdn_load

    if backend == "default" and not tn.OPT:
        raise RuntimeError("torchmd-net default path requested but its Warp kernels are inactive")
    model = tmdn_load(ckpt, device=device, derivative=True, max_num_neighbors=max_neighbors).eval()
    return (lambda z, p, b, box: model(z, p, batch=b, box=box)), f"tmdn_opt={tn.OPT}"


def _stepper(fn, z, inputs, batch, box):
    def step(k: int) -> float:
        energy, forces = fn(z, inputs[k % len(inputs)], batch, box)
        return energy.sum().item() + forces[0, 0].item()  # forces the result to exist

    return step


def run_worker(job: dict) -> list[dict]:
    device = torch.device(job["device"])
    results = []
    for case in job["cases"]:
        res: dict = {"case": case["id"]}
        try:
            fn, notes = _load(job["impl"], case["ckpt"], job["device"], case["max_neighbors"])
            system = systems.build(case["scenario"], case["size"], case["seed"])
            z = torch.as_tensor(system.z, device=device)
            batch = torch.as_tensor(system.batch, device=device)
            box = (
                None
                if system.box is None
                else torch.as_tensor(system.box, dtype=torch.float32, device=device)
            )
            rng = np.random.default_rng(1234)
            n_inputs = case["repeats"] + 1
            inputs = [
                torch.as_tensor(
                    system.pos + rng.normal(scale=0.01, size=system.pos.shape),
                    dtype=torch.float32,
                    device=device,
                )
                for _ in range(n_inputs)
            ]

            step = _stepper(fn, z, inputs, batch, box)

            t0 = time.perf_counter()
            mem = harness.peak_memory_mb(functools.partial(step, -1), device)
            warm = time.perf_counter() - t0
            timing = harness.time_call(
                step, device, repeats=case["repeats"], warmup=0, max_seconds=case["max_seconds"]
            )
            timing["warmup_s"] = warm
            res.update(
                timing,
                peak_mem_mb=mem,
                notes=notes,
                threads=torch.get_num_threads(),
                maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            )
        except Exception as exc:  # recorded as a skip with its reason, never silently
            res["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            traceback.print_exc()
        results.append(res)
    return results


def _spawn(job: dict, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        jpath, rpath = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
        with open(jpath, "w") as fh:
            json.dump(job, fh)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(
                [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            ),
        )
        cmd = [sys.executable, "-m", "bench.bench_model", "--worker", jpath, "--result", rpath]
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            why = f"timeout after {timeout:.0f} s"
            return [{"case": c["id"], "error": why} for c in job["cases"]]
        if proc.returncode != 0 or not os.path.exists(rpath):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            why = "killed (out of memory?)" if proc.returncode in (-9, 137) else tail[0][:300]
            return [
                {"case": c["id"], "error": f"worker exit {proc.returncode}: {why}"}
                for c in job["cases"]
            ]
        with open(rpath) as fh:
            return json.load(fh)


# ------------------------------------------------------------------ driver side


def _graph_stats(system: systems.System, cutoff: float) -> tuple[int, int]:
    """(directed edges incl. self-loops, max in-degree): vesin's cell list for periodic boxes
    when installed (O(N); it agrees with ours), else our reference radius graph (O(N^2))."""
    from tensornet_fast.neighbors import radius_graph_full

    if system.box is not None:
        try:
            import vesin

            i = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
                system.pos, system.box, True, quantities="i"
            )[0]
            deg = np.bincount(i, minlength=system.atoms) + 1  # + self-loop
            return int(deg.sum()), int(deg.max())
        except ImportError:
            pass

    pos = torch.as_tensor(system.pos, dtype=torch.float64)
    box = None if system.box is None else torch.as_tensor(system.box, dtype=torch.float64)
    nl = radius_graph_full(pos, cutoff, torch.as_tensor(system.batch), box, loop=True)
    deg = torch.bincount(nl.edge_index[0], minlength=system.atoms)
    return nl.num_edges, int(deg.max())


def _parse_caps(items: list[str]) -> dict[str, int]:
    caps = {}
    for item in items:
        impl, n = item.rsplit("=", 1)
        caps[impl] = int(n)
    return caps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_model", description="end-to-end energy+forces vs torchmd-net"
    )
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tiny model)")
    p.add_argument("--csv", default=harness.RESULTS_CSV)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=None, help="where checkpoints are cached (default: temp)")
    p.add_argument("--scenario", default="water", choices=systems.SCENARIOS)
    p.add_argument(
        "--sizes",
        default="192",
        help="comma list: atoms (water, protein) or "
        "molecules (g2, random_mols); ignored for single",
    )
    p.add_argument("--layers", default="2")
    p.add_argument("--cutoffs", default="5")
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--rbf", type=int, default=32)
    p.add_argument(
        "--impls",
        default="auto",
        help="comma list of tensornet_fast:<backend>[/tabulated], torchmd-net:default, "
        "torchmd-net:pure; 'auto' = every available backend for --device (on CUDA "
        "also triton/tabulated) + both peers",
    )
    p.add_argument(
        "--max-atoms",
        action="append",
        default=[],
        metavar="IMPL=N",
        help="skip IMPL above N atoms (recorded as a skip with this reason)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=30.0, help="timing budget per case")
    p.add_argument("--timeout", type=float, default=900.0, help="per worker process")
    p.add_argument(
        "--isolate",
        choices=("case", "impl"),
        default=None,
        help="fresh process per (impl, case) [default] or per impl [--tiny]",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        with open(args.worker) as fh:
            job = json.load(fh)
        with open(args.result, "w") as fh:
            json.dump(run_worker(job), fh)
        return 0

    if args.tiny:
        args.features, args.rbf, args.layers, args.cutoffs = 16, 8, "1", "5"
        args.repeats, args.sizes = 2, "192" if args.scenario == "water" else "4"
    isolate = args.isolate or ("impl" if args.tiny else "case")
    impls = default_implementations(args.device) if args.impls == "auto" else args.impls.split(",")
    caps = _parse_caps(args.max_atoms)
    models = [
        (args.features, args.rbf, int(L), float(rc))
        for rc in args.cutoffs.split(",")
        for L in args.layers.split(",")
    ]
    sizes = [int(s) for s in args.sizes.split(",")] if args.scenario != "single" else [22]

    ckpt_dir = args.out_dir and os.path.join(args.out_dir, "checkpoints")
    tmp = None
    if not ckpt_dir:
        tmp = tempfile.TemporaryDirectory()
        ckpt_dir = tmp.name
    os.makedirs(ckpt_dir, exist_ok=True)
    ckpts = make_checkpoints(models, ckpt_dir)

    cases = []
    for F, K, L, rc in models:
        tag = roofline.model_tag(F, K, L, rc)
        for size in sizes:
            system = systems.build(args.scenario, size)
            if system.box is not None and np.min(np.diag(system.box)) <= 2 * rc:
                print(
                    f"skip {system.name} {tag}: box {np.diag(system.box).min():.1f} Å <= 2 r_c "
                    "(torchmd-net needs r_c < half the box)",
                    file=sys.stderr,
                )
                continue
            edges, max_deg = _graph_stats(system, rc)
            cases.append(
                {
                    "id": len(cases),
                    "scenario": args.scenario,
                    "size": size,
                    "seed": 0,
                    "ckpt": ckpts[tag],
                    "tag": tag,
                    "model": (F, K, L, rc),
                    "system": system.name,
                    "atoms": system.atoms,
                    "molecules": system.molecules,
                    "edges": edges,
                    "max_neighbors": int(max_deg * 1.25) + 16,
                    "repeats": args.repeats,
                    "max_seconds": args.max_seconds,
                }
            )

    env = harness.environment(args.device)
    rows, skips = [], []
    # Case-major order (every implementation on case 1, then case 2, ...): on a shared machine
    # the load drifts, and interleaving keeps the ratios between implementations fair.
    jobs = []
    for impl in impls:
        todo = []
        for c in cases:
            cap = caps.get(impl)
            if cap is not None and c["atoms"] > cap:
                skips.append(f"{impl} {c['system']} {c['tag']}: above --max-atoms {cap}")
            else:
                todo.append(c)
        if isolate == "case":
            jobs += [(c["id"], impl, [c]) for c in todo]
        elif todo:
            jobs.append((0, impl, todo))
    jobs.sort(key=lambda j: j[0])  # stable: keeps the implementation order within a case
    payloads = [
        {
            "impl": impl,
            "device": args.device,
            "cases": [{k: v for k, v in c.items() if k != "model"} for c in group],
        }
        for _, impl, group in jobs
    ]
    t0 = time.perf_counter()
    if args.tiny:
        # smoke run: timings are meaningless anyway, so start all workers at once (their
        # start-up, importing torch and torchmd-net, dominates)
        with concurrent.futures.ThreadPoolExecutor(len(payloads) or 1) as pool:
            all_results = list(pool.map(lambda job: _spawn(job, args.timeout), payloads))
    else:
        all_results = (_spawn(job, args.timeout) for job in payloads)
    for (_, impl, group), results in zip(jobs, all_results):
        for c, res in zip(group, results):
            label = f"{impl} {c['system']} {c['tag']}"
            if "error" in res:
                skips.append(f"{label}: {res['error']}")
                print(f"SKIP {label}: {res['error']}", file=sys.stderr)
                continue
            F, K, L, rc = c["model"]
            work = roofline.model_work(F, K, L, c["edges"] / c["atoms"])
            med = res["median_s"]
            family, backend = impl.split(":")
            backend, _, mode = backend.partition("/")
            notes = [
                f"model={c['tag']}",
                f"scenario={c['scenario']}",
                f"isolate={isolate}",
                res.get("notes", ""),
                f"worker_maxrss_mb={res['maxrss_mb']:.0f}",
            ]
            if args.tiny:
                notes.append("tiny=1")
            rows.append(
                {
                    **env,
                    "threads": res["threads"],
                    "benchmark": "model",
                    "implementation": family,
                    "backend": backend,
                    "mode": mode or "exact",
                    "dtype": "float32",
                    "system": c["system"],
                    "atoms": c["atoms"],
                    "edges": c["edges"],
                    "batch": c["molecules"],
                    **{k: res[k] for k in ("warmup_s", "median_s", "p20_s", "p80_s", "repeats")},
                    "ns_per_atom": med / c["atoms"] * 1e9,
                    "peak_mem_mb": res["peak_mem_mb"],
                    "gflops": work.flops * c["atoms"] / med / 1e9,
                    "gbps": work.min_bytes * c["atoms"] / med / 1e9,
                    "notes": ";".join(n for n in notes if n),
                }
            )
            harness.append_rows(rows[-1:], args.csv)  # row by row: a killed sweep keeps its rows
            print(
                f"{label}: median {med * 1e3:.2f} ms, {rows[-1]['ns_per_atom']:.0f} "
                f"ns/atom, warm-up {res['warmup_s']:.2f} s, peak +{res['peak_mem_mb']:.0f} "
                f"MB ({time.perf_counter() - t0:.0f} s since start)",
                file=sys.stderr,
            )
    if skips and args.out_dir:
        with open(os.path.join(args.out_dir, "skipped.txt"), "a") as fh:
            fh.write("".join(s + "\n" for s in skips))
    if tmp is not None:
        tmp.cleanup()
    print(f"{len(rows)} rows -> {args.csv}; {len(skips)} skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
