"""Energy + forces on CPU: the "cpu" backend (exact and tabulated filters) vs the reference backend
and torchmd-net 3.1 (issue #5).

Scenarios (one checkpoint, TensorNet 2L, F=128, K=32, r_c=5, fp32; --tiny: F=32, K=16, small
systems): a periodic water box (~1k atoms) and a batch of 64 g2 molecules (whole call incl. the
neighbour list, and model-only given a prebuilt list); the error of each filter mode against the
float64 model (``error`` rows); a per-stage profile (``profile`` rows); ns/atom/step over water
boxes of 81 .. 98k atoms (``sweep`` rows, whole call; torchmd-net only up to
TNF_BENCH_TMDN_MAX_ATOMS, exact filters only up to TNF_BENCH_EXACT_MAX_ATOMS, see below).

Every measurement runs in a FRESH subprocess, so its peak memory (the first call's resident-set
high-water mark above the resident set before it, _first_call_peak_mb) belongs to that
implementation alone, and torchmd-net runs its default path as installed
(this file never imports tests/oracle.py, which reroutes torchmd-net to its pure path; the
checkpoint is written by a separate subprocess that does).

    python bench/bench_cpu_backend.py [--tiny] [--csv PATH] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMPLS = ("ours-exact", "ours-tabulated", "reference", "torchmd-net")
# Sweep limits. torchmd-net: O(N^2) neighbour search and per-edge [E, 3, 3, F] tensors (~1.5 GB
# at 1k water atoms, linear in E): 3000 atoms is as far as this shared 23 GB machine goes.
# Exact filters: one [U, 3F] value table and one derivative table per filter for U distinct
# distances (~E/2): ~2.5 GB at 10k atoms, ~25 GB at 100k; the tabulated mode has no such table.
MAX_SCALING_ATOMS = int(os.environ.get("TNF_BENCH_MAX_ATOMS", "100000"))
TMDN_MAX_ATOMS = int(os.environ.get("TNF_BENCH_TMDN_MAX_ATOMS", "3000"))
EXACT_MAX_ATOMS = int(os.environ.get("TNF_BENCH_EXACT_MAX_ATOMS", "10200"))
SWEEP_SIZES = (3, 4, 7, 10, 15, 22, 32)  # water boxes of 3 n^3 atoms: 81 .. 98304


# ----------------------------------------------------------------------------- subprocesses
def _make_checkpoint(path: str, tiny: bool) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from oracle import make_checkpoint

    size = dict(embedding_dimension=32, num_rbf=16) if tiny else {}
    make_checkpoint(
        path,
        seed=11,
        precision=32,
        num_layers=2,
        cutoff_upper=5.0,
        **{"embedding_dimension": 128, "num_rbf": 32, **size},
    )


def _system(name: str):
    """(z, pos, batch, box) in float32."""
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from systems import water_box

    if name.startswith("water"):
        n = int(name[len("water") :])
        z, pos, box = water_box(n, seed=4, dtype=torch.float32)
        return z, pos, torch.zeros_like(z), box
    if name.startswith("g2x"):
        from ase.build import molecule
        from ase.collections import g2

        count = int(name[3:])
        rng = np.random.default_rng(0)
        zs, ps, bs = [], [], []
        for k, mol in enumerate(sorted(g2.names)[:count]):
            atoms = molecule(mol)
            zs.append(atoms.numbers)
            ps.append(atoms.positions + 0.03 * rng.normal(size=atoms.positions.shape))
            bs.append(np.full(len(atoms), k))
        return (
            torch.as_tensor(np.concatenate(zs)),
            torch.as_tensor(np.concatenate(ps), dtype=torch.float32),
            torch.as_tensor(np.concatenate(bs)),
            None,
        )
    raise ValueError(name)


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _lifetime_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _first_call_peak_mb(call) -> float:
    """Peak resident memory of one call above the resident memory before it (MB). Linux: the
    high-water mark is reset before the call (/proc/self/clear_refs 5), so memory the process
    peaked at earlier (loading, building tables) does not hide the call's own peak. Elsewhere:
    growth of the process's lifetime peak (ru_maxrss), a lower bound."""
    rss = _proc_status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        rss = None
    if rss is None:
        before = _lifetime_peak_mb()
        call()
        return _lifetime_peak_mb() - before
    call()
    return _proc_status_mb("VmHWM") - rss


def _setup(impl: str, ckpt: str, system: str, mode: str):
    """(call, info) for one implementation on one system in this process, or (None, {"error"}).
    mode: "total" (model call incl. neighbour list), "model" (cpu backend given a prebuilt
    neighbour list), "profile" / "error" (like total)."""
    import torch

    z, pos, batch, box = _system(system)
    if system.startswith("water") and z.shape[0] > MAX_SCALING_ATOMS:
        msg = f"skipped: {z.shape[0]} atoms > MAX_SCALING_ATOMS={MAX_SCALING_ATOMS}"
        return None, {"error": msg}
    if impl == "torchmd-net" and z.shape[0] > TMDN_MAX_ATOMS:
        return None, {"error": f"skipped: {z.shape[0]} atoms > TMDN_MAX_ATOMS={TMDN_MAX_ATOMS}"}
    if impl == "ours-exact" and z.shape[0] > EXACT_MAX_ATOMS:
        msg = f"skipped: {z.shape[0]} atoms > EXACT_MAX_ATOMS={EXACT_MAX_ATOMS}"
        return None, {"error": msg}
    edges = None
    if impl == "torchmd-net":
        import warnings

        warnings.simplefilter("ignore")
        from torchmdnet.models.model import load_model as tmdn_load

        model = tmdn_load(ckpt, derivative=True).eval()

        def call(_k=0):
            y, f = model(z, pos, batch=batch, box=box)
            return y.detach(), f.detach()

    else:
        import tensornet_fast as tnf

        backend = "reference" if impl == "reference" else "cpu"
        fmode = "tabulated" if impl == "ours-tabulated" else "exact"
        model = tnf.load_model(ckpt, backend=backend, filter_mode=fmode)
        if mode in ("total", "profile", "error"):

            def call(_k=0):
                return model(z, pos, batch, box=box)

        else:
            nl = model.neighbor_list(pos, batch, box)
            edges = nl.num_edges
            ones = torch.ones(z.shape[0])

            def call(_k=0):
                with torch.enable_grad():
                    vec = nl.edge_vec.detach().requires_grad_(True)
                    nl2 = type(nl)(nl.edge_index, vec, nl.edge_dist.detach(), nl.shifts, nl.row_ptr)
                    e = model.backend_impl.atomic_energies(model, z, nl2, ones).sum()
                    (g,) = torch.autograd.grad(e, vec)
                return e.detach(), g

    info: dict = {"atoms": int(z.shape[0]), "threads": torch.get_num_threads()}
    if edges is not None:
        info["edges"] = edges
    info["system"] = (z, pos, batch, box)
    return call, info


def _worker(impl: str, ckpt: str, system: str, repeats: int, mode: str) -> dict:
    """Runs in its own process: "total" / "model" timing (time_call), "error" or "profile"."""
    import torch

    sys.path.insert(0, ROOT)
    from bench.harness import time_call

    call, out = _setup(impl, ckpt, system, mode)
    if call is None:
        return out
    z, pos, batch, box = out.pop("system")
    if mode == "error":
        # relative errors vs the same checkpoint in float64 (cpu backend, exact filters: it
        # matches torchmd-net's float64 pure path to ~1e-14, tests/test_cpu_backend.py)
        from tolerances import relative_error  # tests/ is on sys.path (see _system)

        call()
        t = time.perf_counter()
        y, f = call()
        out["median_s"] = time.perf_counter() - t  # one timed call (the error is the point)
        import tensornet_fast as tnf

        m64 = tnf.load_model(ckpt, backend="cpu", filter_mode="exact", precision=64)
        box64 = None if box is None else box.double()
        y64, f64 = m64(z, pos.double(), batch, box=box64)
        out["energy_rel_err"] = relative_error(y, y64)
        out["forces_rel_err"] = relative_error(f, f64)
        out["auto_filter_mode"] = tnf.load_model(ckpt).filter_mode  # what the default runs
        return out
    if mode == "profile":
        call()
        stages: dict[str, float] = {}
        with torch.profiler.profile() as prof:
            t = time.perf_counter()
            call()
            out["median_s"] = time.perf_counter() - t
        for ev in prof.key_averages():
            if ev.key.startswith("tnf."):
                stages[ev.key[len("tnf.cpu.") :]] = ev.cpu_time_total / 1e6
            elif ev.key == "tensornet_fast::radius_graph":
                stages["neighbor_list"] = ev.cpu_time_total / 1e6
        # the stages do not nest; the rest is Python, the output head, priors, allocation
        stages["other"] = max(0.0, out["median_s"] - sum(stages.values()))
        out["stages"] = stages
        return out
    t0 = time.perf_counter()
    out["peak_mem_mb"] = _first_call_peak_mb(call)
    out["first_s"] = time.perf_counter() - t0
    out.update(time_call(call, repeats=repeats, warmup=2, max_seconds=20.0))
    return out


def _serve(impl: str, ckpt: str, system: str, mode: str) -> None:
    """A resident worker for interleaved timing: set up, measure the first call's peak memory,
    two warm-up calls, print the info as one JSON line; then for each line "k" on stdin run k
    timed calls and print their times (s) as a JSON list; stop at EOF."""
    call, info = _setup(impl, ckpt, system, mode)
    if call is not None:
        info.pop("system")
        t0 = time.perf_counter()
        info["peak_mem_mb"] = _first_call_peak_mb(call)
        info["first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(2):
            call()
        info["call_s"] = (time.perf_counter() - t0) / 2
    print(json.dumps(info), flush=True)
    if call is None:
        return
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        print(json.dumps(times), flush=True)


def _interleaved(workers: list, ckpt: str, system: str, blocks: int, block_s: float) -> dict:
    """Time several (impl, mode) workers on one system in alternating blocks of calls, so a
    phase of this shared machine being slow falls on all of them alike (one process each, only
    one running at a time; fresh-process medians taken one after the other moved the ratio by
    up to ~50% between runs). Each block is ~block_s seconds of one worker's calls; the block
    order rotates. Returns {(impl, mode): info with median_s, p20_s, p80_s, repeats}."""
    import statistics

    def reply(proc):  # the next JSON line of a worker (libraries may print other lines)
        for line in proc.stdout:
            if line[:1] in "{[":
                return json.loads(line)
        return None

    procs, results = {}, {}
    try:
        for key in workers:
            impl, mode = key
            err = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and block the worker
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve", impl, ckpt, system, mode],
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
                lines = err.read().strip().splitlines()
                results[key] = {"error": lines[-1] if lines else "failed"}
                continue
            results[key] = info
            if "error" in results[key]:
                proc.stdin.close()
                proc.wait()
                continue
            results[key]["times"] = []
            procs[key] = proc
        for b in range(blocks):
            order = list(procs)  # a worker that died is dropped (its error reported)
            for key in order[b % len(order) :] + order[: b % len(order)] if order else ():
                k = max(1, min(20, round(block_s / max(results[key]["call_s"], 1e-6))))
                try:
                    procs[key].stdin.write(f"{k}\n")
                    procs[key].stdin.flush()
                    times = reply(procs[key])
                except OSError:  # broken pipe: the worker is gone
                    times = None
                if times is None:
                    done = len(results[key]["times"])
                    results[key] = {"error": f"worker died after {done} timed calls"}
                    procs.pop(key).wait()
                    continue
                results[key]["times"] += times
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    for key in procs:
        times = sorted(results[key].pop("times"))
        q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
        results[key].update(
            median_s=statistics.median(times), p20_s=q[0], p80_s=q[3], repeats=len(times)
        )
    return results


def _worker_env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Same for every implementation: OpenMP threads sleep instead of spinning at barriers. On a
    # shared, oversubscribed machine spinning cost our op-heavy node-level path 2x (measured
    # 1.2-1.7 s vs 0.6 s per water7 step); set OMP_WAIT_POLICY yourself to override.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # importing tensornet_fast sets this default (huge pages for fresh tensors >= 2 MB); the
    # same for torchmd-net, whose per-edge tensors are fresh memory too
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return env


def _run(args: list[str], timeout: float = 1800) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_worker_env())
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI)")
    parser.add_argument("--csv", default=None, help="results CSV (default bench/results)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS)
    )
    parser.add_argument(
        "--no-scaling", action="store_true", help="only the two scenarios and the profile"
    )
    parser.add_argument(
        "--worker",
        nargs=5,
        metavar=("IMPL", "CKPT", "SYSTEM", "REP", "MODE"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--serve", nargs=4, metavar=("IMPL", "CKPT", "SYSTEM", "MODE"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--make-checkpoint", nargs=2, metavar=("PATH", "TINY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.make_checkpoint:
        _make_checkpoint(args.make_checkpoint[0], args.make_checkpoint[1] == "1")
        print(json.dumps({"ok": True}))
        return 0
    if args.serve:
        sys.path.insert(0, ROOT)
        _serve(*args.serve)
        return 0
    if args.worker:
        impl, ckpt, system, rep, mode = args.worker
        print(json.dumps(_worker(impl, ckpt, system, int(rep), mode)))
        return 0
    if args.device != "cpu":
        print("bench_cpu_backend measures the CPU backend only; use --device cpu")
        return 2

    sys.path.insert(0, ROOT)
    from bench.harness import RESULTS_CSV, append_rows, environment

    csv_path = args.csv or RESULTS_CSV
    env = environment("cpu")
    tmp = tempfile.mkdtemp(prefix="bench_cpu_")
    ckpt = os.path.join(tmp, "model.ckpt")
    made = _run(["--make-checkpoint", ckpt, "1" if args.tiny else "0"])
    if "error" in made:
        print("could not write the checkpoint:", made["error"])
        return 1
    model_desc = "2L F=32 K=16 rc=5" if args.tiny else "2L F=128 K=32 rc=5"
    water, g2 = ("water3", "g2x8") if args.tiny else ("water7", "g2x64")
    # The two scenarios are timed interleaved (_interleaved: 8 rounds of ~1 s blocks per
    # implementation); the sweep: 2 timed calls after 2 untimed ones, fresh process per size.
    rows = []
    process_env = "OMP_WAIT_POLICY={}; THP_MEM_ALLOC_ENABLE={}".format(
        os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), os.environ.get("THP_MEM_ALLOC_ENABLE", "1")
    )

    def row(impl, system, res, mode="total", notes=""):
        base = dict(
            env,
            benchmark="cpu_backend",
            implementation=impl,
            dtype="float32",
            backend="cpu" if impl.startswith("ours") else impl,
            mode={"ours-tabulated": "tabulated"}.get(impl, "exact") + f"/{mode}",
            system=system,
            batch=64 if system.startswith("g2x64") else 1,
        )
        if "error" in res:
            return dict(base, notes=f"{model_desc}; ERROR {res['error'][:200]}")
        n = res["atoms"]
        return dict(
            base,
            atoms=n,
            edges=res.get("edges", ""),
            warmup_s=res.get("first_s", ""),
            median_s=res["median_s"],
            # a single timed run (the per-stage profile) has no spread: p20 = p80 = median
            p20_s=res.get("p20_s", res["median_s"]),
            p80_s=res.get("p80_s", res["median_s"]),
            repeats=res.get("repeats", 1),
            threads=res.get("threads", env["threads"]),
            ns_per_atom=res["median_s"] / n * 1e9,
            peak_mem_mb=res.get("peak_mem_mb", ""),
            notes=f"{model_desc}; {process_env}; {notes}",
        )

    results: dict = {}
    impls = [i for i in IMPLS if i in args.impls.split(",")]
    notes = {
        "total": "energy+forces incl. neighbour list; interleaved with the other "
        "implementations (resident processes, alternating ~1 s blocks); peak = first call's "
        "RSS high-water mark above its RSS before",
        "model": "energy+forces given a prebuilt neighbour list; interleaved",
    }
    for system in (water, g2):
        workers = [(i, "total") for i in impls] + [(i, "model") for i in impls if i[:4] == "ours"]
        timed = _interleaved(workers, ckpt, system, blocks=2 if args.tiny else 8, block_s=1.0)
        for (impl, mode), res in timed.items():
            results[(impl, system) if mode == "total" else (impl, system, mode)] = res
            rows.append(row(impl, system, res, mode, notes[mode]))
            print(
                f"{system:8s} {impl:15s} {'' if mode == 'total' else 'model only '}"
                + (
                    res.get("error", "")
                    or f"{res['median_s']:.3f} s  peak {res['peak_mem_mb']:.0f} MB"
                    f"  ({res['repeats']} calls)"
                ),
                flush=True,
            )
        peer = results.get(("torchmd-net", system), {})
        for impl in ("ours-exact", "ours-tabulated"):
            for key in ((impl, system), (impl, system, "model")):
                ours = results.get(key, {})
                if "median_s" in ours and "median_s" in peer:
                    print(
                        f"  {'/'.join(key[2:]) or 'total':5s} {impl}: "
                        f"{peer['median_s'] / ours['median_s']:.1f}x faster, memory "
                        f"{ours['peak_mem_mb'] / max(peer['peak_mem_mb'], 1e-9):.3f}x "
                        "of torchmd-net"
                    )

    # error of each mode vs the float64 model (same checkpoint), both systems
    for system in (water, g2):
        for impl in [i for i in impls if i.startswith("ours")]:
            res = _run(["--worker", impl, ckpt, system, "1", "error"])
            if "error" in res:
                print(f"error {impl} {system}: {res['error']}")
                continue
            text = (
                f"energy_rel_err={res['energy_rel_err']:.2e};"
                f"forces_rel_err={res['forces_rel_err']:.2e};"
                f"auto_filter_mode={res['auto_filter_mode']}"
            )
            print(f"error vs float64 {impl:15s} {system}: {text}")
            rows.append(row(impl, system, res, "error", "vs the float64 model; " + text))

    # per-stage profile (both systems, both modes)
    for system in (water, g2):
        for impl in [i for i in impls if i.startswith("ours")]:
            res = _run(["--worker", impl, ckpt, system, "1", "profile"])
            if "stages" in res:
                stages = res["stages"]
                text = ";".join(f"{k}={v:.4f}" for k, v in stages.items())
                print(f"profile {impl} {system}: total {res['median_s']:.3f} s: {text}")
                rows.append(row(impl, system, res, "profile", "stages_s=" + text))

    # ns/atom/step sweep (whole call incl. the compiled neighbour list)
    sizes = (3, 4) if args.tiny else SWEEP_SIZES
    sweep_impls = [i for i in ("ours-tabulated", "ours-exact", "torchmd-net") if i in impls]
    for impl in () if args.no_scaling else sweep_impls:
        for n in sizes:
            res = _run(["--worker", impl, ckpt, f"water{n}", "2", "total"])
            if "error" in res:
                print(f"sweep {impl} water{n}: {res['error']}")
                if res["error"].startswith("skipped"):
                    break
                rows.append(row(impl, f"water{n}", res, "sweep", "sweep"))
                break
            rows.append(row(impl, f"water{n}", res, "sweep", "sweep; whole call"))
            print(
                f"sweep {impl:15s} {res['atoms']:6d} atoms: "
                f"{res['median_s'] / res['atoms'] * 1e9:9.0f} ns/atom/step, "
                f"peak {res['peak_mem_mb']:.0f} MB",
                flush=True,
            )

    append_rows(rows, csv_path)
    print(f"{len(rows)} rows -> {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
