"""Energy + forces + stress of matgl's TensorNet: tensornet_fast against matgl 4.1.2 (issue #23).

Model: a MatPES-sized TensorNet written by matgl itself with random weights (F=128, 2 layers, 89
elements, smooth spherical Bessel basis K=3, r_c=5 A, float32; --tiny: F=32). Systems: a
rattled rocksalt NaCl cell of 1000 atoms and a rattled MgO cell of 96 atoms (--tiny: 64 and 16).

Implementations, each in its own resident process, timed INTERLEAVED in alternating blocks of
~1 s (this machine is shared; ratios are what compare):
- ``matgl``: matgl 4.1.2 as its users call it (Atoms2Graph + Potential, its default path here:
  Warp kernels when matgl finds them, else PyTorch Geometric; the row says which);
- ``ours``: ``load_model(folder)`` defaults (cpu backend, ``filter_mode="auto"``);
- ``ours-exact``: the same with exact filters.
Whole call each: neighbour list / graph, energy, forces, stress. Peak memory: the first call's
resident-set high-water mark above the resident set before it. Errors (``error`` rows): each
float32 implementation against float64 (tensornet_fast's float64 exact path, which equals matgl
4.1.2's float64 to ~1e-13, tests/model/test_matgl.py).

    python bench/bench_matgl.py [--tiny] [--csv PATH] [--blocks 8] [--no-csv]
    python bench/bench_matgl.py --profile   # where one call of ours spends its time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench.bench_cpu_backend import _first_call_peak_mb, _worker_env  # noqa: E402

IMPLS = ("matgl", "ours", "ours-exact")


def _make_model(folder: str, tiny: bool) -> None:
    """A random MatPES-sized matgl TensorNet, saved by matgl (4.1.2: a version-2 folder; both
    conventions cost the same)."""
    import warnings

    warnings.simplefilter("ignore")
    import torch
    from matgl.apps.pes import Potential
    from matgl.config import DEFAULT_ELEMENTS
    from matgl.models import TensorNet

    torch.manual_seed(0)
    model = TensorNet(
        element_types=DEFAULT_ELEMENTS,
        units=32 if tiny else 128,
        nblocks=2,
        rbf_type="SphericalBessel",
        use_smooth=True,
        max_n=3,
        cutoff=5.0,
        is_intensive=False,
        # matgl's default path (its Warp kernels when it finds them), saved with it: a Warp
        # model writes its fused distance_proj on disk
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    refs = torch.randn(len(DEFAULT_ELEMENTS), generator=gen)
    Potential(model=model, data_std=3.0, element_refs=refs, calc_stresses=True).save(folder)


def _atoms(system: str, tiny: bool):
    from ase.build import bulk

    if system == "NaCl":
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2) if tiny else 5)
    else:
        atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat((1, 1, 2) if tiny else (2, 2, 3))
    atoms.rattle(0.05, seed=3)
    return atoms


def _setup(impl: str, folder: str, system: str, tiny: bool, dtype: str = "float32"):
    """(call returning (energy, forces [N, 3], stress [3, 3]) in eV, eV/A, eV/A^3, info)."""
    import warnings

    warnings.simplefilter("ignore")
    import torch

    atoms = _atoms(system, tiny)
    info: dict = {"atoms": len(atoms), "threads": torch.get_num_threads()}
    if impl == "matgl":
        import contextlib
        import io

        import matgl

        with contextlib.redirect_stdout(io.StringIO()):  # Warp's banner
            from matgl.apps.pes import Potential
            from matgl.ext.ase import Atoms2Graph

            if dtype == "float64":
                matgl.set_default_dtype("float", 64)
            pot = Potential.load(folder)
            if dtype == "float64":
                pot = pot.double()
        convert = Atoms2Graph(pot.model.element_types, pot.model.cutoff)
        info["path"] = "warp" if getattr(pot.model, "_use_warp", False) else "pyg"
        info["matgl"] = matgl.__version__

        def call():
            g, lat, state = convert.get_graph(atoms)
            e, f, s, _ = pot(g, lat, state)
            return e.detach().reshape(()), f.detach(), s.detach().reshape(3, 3) / 160.21766208

        return call, info
    import tensornet_fast as tnf

    mode = "exact" if impl == "ours-exact" else "auto"
    model = tnf.load_model(folder, filter_mode=mode, precision=64 if dtype == "float64" else 32)
    info["path"] = f"{model.backend}/{model.filter_mode}"
    z = torch.as_tensor(atoms.numbers)
    pos = torch.as_tensor(atoms.positions, dtype=model.dtype)
    box = torch.as_tensor(atoms.cell.array, dtype=model.dtype)

    def call():
        out = model.compute(z, pos, box=box, stress=True)
        return out["energy"].reshape(()), out["forces"], out["stress"][0]

    return call, info


def _serve(impl: str, folder: str, system: str, tiny: bool) -> None:
    """Resident worker: set up, first call's peak memory, two warm-up calls, one JSON line of
    info; then for each line "k" on stdin, k timed calls -> a JSON list of times."""
    call, info = _setup(impl, folder, system, tiny)
    t0 = time.perf_counter()
    info["peak_mem_mb"] = _first_call_peak_mb(call)
    info["first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(2):
        call()
    info["call_s"] = (time.perf_counter() - t0) / 2
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        print(json.dumps(times), flush=True)


def _errors(folder: str, system: str, tiny: bool) -> dict:
    """Relative errors (max |diff| / max |ref|) of each float32 implementation vs float64."""
    import torch

    ref_call, _ = _setup("ours-exact", folder, system, tiny, "float64")
    ref = ref_call()
    out = {}
    for impl in IMPLS:
        call, info = _setup(impl, folder, system, tiny)
        got = call()
        errs = [
            float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))
            for a, b in zip(got, ref)
        ]
        out[impl] = dict(zip(("energy", "forces", "stress"), errs), path=info["path"])
    m64, _ = _setup("matgl", folder, system, tiny, "float64")
    got = m64()
    out["matgl-float64"] = {
        k: float((a.double() - b).abs().max() / b.abs().max())
        for k, a, b in zip(("energy", "forces", "stress"), got, ref)
    }
    torch.set_num_threads(torch.get_num_threads())
    return out


# torch profiler op -> the part of the call it belongs to (--profile)
_PARTS = {
    "cpu_layer_fwd": "interaction layers, forward",
    "cpu_layer_bwd": "interaction layers, backward",
    "cpu_embed_fwd": "embedding edge passes",
    "cpu_embed_bwd": "embedding edge passes",
    "cpu_embed_combine_fwd": "embedding combine (channel GEMMs)",
    "cpu_embed_combine_bwd": "embedding combine (channel GEMMs)",
    "cpu_rows_fwd": "LayerNorm + MLP rows (embedding, linear)",
    "cpu_rows_bwd": "LayerNorm + MLP rows (embedding, linear)",
    "cpu_sq_norms": "squared norms",
    "cpu_sq_norms_bwd": "squared norms",
    "radius_graph": "neighbour search",
    "cpu_spline_locate": "spline intervals",
    "aten::addmm": "gated readout (autograd GEMMs, SiLU)",
    "aten::mm": "gated readout (autograd GEMMs, SiLU)",
    "aten::silu": "gated readout (autograd GEMMs, SiLU)",
    "aten::silu_backward": "gated readout (autograd GEMMs, SiLU)",
}


def _profile(folder: str, system: str, tiny: bool) -> None:
    """Where one call of ``ours`` spends its time: on one thread, the call's median thread CPU
    time (robust to other processes on a shared machine), then the torch profiler's self time
    per part of the call (the profiler adds ~5 us per op, so "other" reads high)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    call, info = _setup("ours", folder, system, tiny)
    for _ in range(3):
        call()
    n = max(3, min(30, round(1.0 / max(_timed(call), 1e-6))))
    cpu = statistics.median(_timed(call, time.thread_time) for _ in range(n))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            call()
    parts: dict = {}
    for ev in prof.key_averages():
        part = _PARTS.get(ev.key.removeprefix("tensornet_fast::"), "other ops, autograd, Python")
        parts[part] = parts.get(part, 0.0) + ev.self_cpu_time_total
    total = sum(parts.values())
    print(f"{system} ({info['atoms']} atoms, {info['path']}): {cpu * 1e3:.1f} ms thread CPU time")
    for part, t in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {part:42s} {100 * t / total:5.1f}%")


def _timed(call, clock=time.perf_counter) -> float:
    t = clock()
    call()
    return clock() - t


def _interleaved(folder: str, system: str, tiny: bool, blocks: int) -> dict:
    def reply(proc):
        for line in proc.stdout:
            if line[:1] in "{[":
                return json.loads(line)
        return None

    procs, results = {}, {}
    try:
        for impl in IMPLS:
            err = tempfile.TemporaryFile(mode="w+")
            cmd = [sys.executable, __file__, "--serve", impl, folder, system]
            proc = subprocess.Popen(
                cmd + (["--tiny"] if tiny else []),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=_worker_env(),
            )
            info = reply(proc)
            if info is None:
                proc.wait()
                err.seek(0)
                results[impl] = {"error": (err.read().strip().splitlines() or ["failed"])[-1]}
                continue
            results[impl] = {**info, "times": []}
            procs[impl] = proc
        for b in range(blocks):
            order = list(procs)
            for impl in order[b % len(order) :] + order[: b % len(order)]:
                k = max(1, min(20, round(1.0 / max(results[impl]["call_s"], 1e-6))))
                procs[impl].stdin.write(f"{k}\n")
                procs[impl].stdin.flush()
                results[impl]["times"] += reply(procs[impl])
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    for impl in procs:
        times = sorted(results[impl].pop("times"))
        q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
        results[impl].update(
            median_s=statistics.median(times), p20_s=q[0], p80_s=q[3], repeats=len(times)
        )
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    p.add_argument("--csv", default=None, help="results CSV (default bench/results/results.csv)")
    p.add_argument("--no-csv", action="store_true", help="print only")
    p.add_argument("--blocks", type=int, default=8, help="interleaved rounds per system")
    p.add_argument("--device", default="cpu", choices=("cpu",), help="cpu only (matgl on CPU)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison: where one call of ours spends its time (1 thread)",
    )
    p.add_argument("--serve", nargs=3, metavar=("IMPL", "FOLDER", "SYSTEM"), help=argparse.SUPPRESS)
    p.add_argument("--make", metavar="FOLDER", help=argparse.SUPPRESS)
    p.add_argument("--profile-one", nargs=2, metavar=("FOLDER", "SYSTEM"), help=argparse.SUPPRESS)
    p.add_argument("--errors", nargs=2, metavar=("FOLDER", "SYSTEM"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make:
        _make_model(args.make, args.tiny)
        return 0
    if args.serve:
        _serve(*args.serve, args.tiny)
        return 0
    if args.profile_one:
        _profile(*args.profile_one, args.tiny)
        return 0
    if args.errors:
        print(json.dumps(_errors(*args.errors, args.tiny)))
        return 0

    if args.profile:
        folder = tempfile.mkdtemp(prefix="bench_matgl_")
        tiny = ["--tiny"] if args.tiny else []
        subprocess.run(
            [sys.executable, __file__, "--make", folder, *tiny], check=True, env=_worker_env()
        )
        for system in ("NaCl", "MgO"):
            subprocess.run(
                [sys.executable, __file__, "--profile-one", folder, system, *tiny],
                check=True,
                env=_worker_env(),
            )
        return 0

    from bench.harness import RESULTS_CSV, append_rows, environment

    env = environment("cpu")
    folder = tempfile.mkdtemp(prefix="bench_matgl_")
    tiny = ["--tiny"] if args.tiny else []
    subprocess.run(
        [sys.executable, __file__, "--make", folder, *tiny], check=True, env=_worker_env()
    )
    width = 32 if args.tiny else 128
    desc = f"matgl TensorNet 2L F={width} K=3 (smooth Bessel) rc=5, 89 elements"
    rows = []
    for system in ("NaCl", "MgO"):
        res = _interleaved(folder, system, args.tiny, 2 if args.tiny else args.blocks)
        proc = subprocess.run(
            [sys.executable, __file__, "--errors", folder, system, *tiny],
            capture_output=True,
            text=True,
            env=_worker_env(),
        )
        errs = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
        base = res.get("matgl", {})
        for impl, r in res.items():
            if "error" in r:
                print(f"{system:5s} {impl:11s} ERROR {r['error']}")
                continue
            speed = base.get("median_s", float("nan")) / r["median_s"]
            mem = r["peak_mem_mb"] / base.get("peak_mem_mb", float("nan"))
            e = errs.get(impl, {})
            print(
                f"{system:5s} {impl:11s} {r['median_s']:.4f} s (p20 {r['p20_s']:.4f}, p80 "
                f"{r['p80_s']:.4f}, {r['repeats']} calls)  peak {r['peak_mem_mb']:.0f} MB  "
                f"speed x{speed:.1f}  memory x{mem:.3f}  [{r['path']}]  err E "
                f"{e.get('energy', 0):.1e} F {e.get('forces', 0):.1e} S {e.get('stress', 0):.1e}",
                flush=True,
            )
            rows.append(
                dict(
                    env,
                    benchmark="matgl",
                    implementation=impl,
                    backend="matgl" if impl == "matgl" else "cpu",
                    mode=r["path"],
                    dtype="float32",
                    system=f"{system}{r['atoms']}",
                    atoms=r["atoms"],
                    batch=1,
                    warmup_s=r["first_s"],
                    median_s=r["median_s"],
                    p20_s=r["p20_s"],
                    p80_s=r["p80_s"],
                    repeats=r["repeats"],
                    threads=r["threads"],
                    ns_per_atom=r["median_s"] / r["atoms"] * 1e9,
                    peak_mem_mb=r["peak_mem_mb"],
                    notes=f"{desc}; energy+forces+stress incl. graph; interleaved; "
                    f"x{speed:.1f} matgl's speed, x{mem:.3f} its memory; rel. error vs float64: "
                    + ", ".join(f"{k} {v:.1e}" for k, v in e.items() if k != "path"),
                )
            )
        if "matgl-float64" in errs:
            print(f"{system:5s} matgl float64 vs ours float64: {errs['matgl-float64']}")
    if not args.no_csv:
        append_rows(rows, args.csv or RESULTS_CSV)
    return 0


if __name__ == "__main__":
    sys.exit(main())
