"""Per-step latency on CPU: where the time of a small call goes, and how the thread count and a
co-running process change it.

Scenarios (all in this process, float32, energy + forces; implementations timed in interleaved
rounds so host phases hit all of them):

- ``single``: biphenyl (22 atoms) with the bundled model (TensorNet 2L F=48 r_c=5): the plain
  ``model(z, pos)`` call, ``MDStep`` (eager: Verlet candidates cut to the exact pairs, cpu
  kernels) and torchmd-net 3.1 (its default path, when it imports), each at 1 and 2 threads
  (``threads`` column); ``mode=...,adaptive=off`` rows run 2 threads with the small-system and
  load rules of ``backends/cpu/threads.py`` switched off (what every call did before them).
- ``sizes``: g2 batches of 1..64 molecules, plain call at 1 and 2 threads with the rules off:
  the crossover that sets ``SMALL_SYSTEM_ATOMS``.
- ``breakdown``: one ``profile`` row per implementation: CPU time per step split into stages
  (``stages_us=``: step bookkeeping, neighbour list, backend forward, energy assembly,
  backward) measured by running the pipeline's prefixes, the compiled kernels' own time
  (``kernels_us=``, torch.profiler), and the aten / custom op count per step (dispatch).
- ``profile``: one 22-atom call split into stages (input checks, neighbour list, backend
  setup / forward / backward, forces scatter, finite check, the rest of the assembly) with
  torch.profiler (record_shapes): ops dispatched and time per stage, compiled kernels' share.
- ``--corun``: 64 g2 molecules (453 atoms) with and without a CPU-bound process beside them:
  1 thread, 2 threads with the rules off, 2 threads with them on.

    python -m bench.bench_latency [--tiny] [--csv PATH] [--rounds N] [--corun] [--no-tmdn]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import harness, systems  # noqa: E402


def _inputs(pos: torch.Tensor, n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [pos + 0.01 * torch.randn(pos.shape, generator=gen, dtype=pos.dtype) for _ in range(n)]


class Impl:
    """One timed implementation: ``call(pos)`` at ``threads`` threads (adaptive rules on/off)."""

    def __init__(self, name, backend, mode, call, threads, adaptive=True, notes=""):
        self.name, self.backend, self.mode = name, backend, mode
        self.call, self.threads, self.adaptive, self.notes = call, threads, adaptive, notes
        self.times: list[float] = []

    def run(self, inputs, calls: int) -> None:
        from tensornet_fast.backends.cpu import threads as rules

        torch.set_num_threads(self.threads)
        rules._ENABLED = self.adaptive
        try:
            for k in range(calls):
                t = time.perf_counter()
                energy, forces = self.call(inputs[k % len(inputs)])
                float(energy.sum())
                self.times.append(time.perf_counter() - t)
        finally:
            rules._ENABLED = True


def interleave(impls: list[Impl], inputs, rounds: int, block_s: float) -> None:
    """``rounds`` rounds; in each, every implementation runs ~block_s of calls (rotating order);
    the first round is warm-up and is discarded."""
    for impl in impls:
        impl.run(inputs, 3)
        impl.times.clear()
    calls = {}
    for impl in impls:  # calls per block from one timed probe
        t = time.perf_counter()
        impl.run(inputs, 2)
        calls[impl] = max(2, int(block_s / max((time.perf_counter() - t) / 2, 1e-5)))
        impl.times.clear()
    for r in range(rounds):
        order = impls[r % len(impls) :] + impls[: r % len(impls)]
        for impl in order:
            impl.run(inputs, calls[impl])


def rows_of(impls, env, system, benchmark, extra="") -> list[dict]:
    rows = []
    for impl in impls:
        ts = sorted(impl.times)
        if not ts:
            continue
        q = [ts[int(f * (len(ts) - 1))] for f in (0.2, 0.5, 0.8)]
        notes = ";".join(
            x
            for x in (
                "model=L2-F48-K32-rc5" if "biphenyl" in system.name else "",
                f"adaptive={'on' if impl.adaptive else 'off'}",
                impl.notes,
                extra,
                f"loadavg={harness.load_average()}",
            )
            if x
        )
        rows.append(
            dict(
                env,
                threads=impl.threads,
                benchmark=benchmark,
                implementation=impl.name,
                backend=impl.backend,
                mode=impl.mode,
                dtype="float32",
                system=system.name,
                atoms=system.atoms,
                batch=system.molecules,
                warmup_s=0.0,
                median_s=q[1],
                p20_s=q[0],
                p80_s=q[2],
                repeats=len(ts),
                ns_per_atom=q[1] / system.atoms * 1e9,
                notes=notes,
            )
        )
        print(
            f"{benchmark:9s} {system.name:14s} {impl.name:12s} {impl.mode:8s} "
            f"threads={impl.threads} adaptive={'on ' if impl.adaptive else 'off'} "
            f"median {q[1] * 1e3:8.3f} ms (p20 {q[0] * 1e3:.3f}, p80 {q[2] * 1e3:.3f}, "
            f"n={len(ts)})",
            flush=True,
        )
    return rows


def _tensors(system):
    z = torch.as_tensor(system.z)
    pos = torch.as_tensor(system.pos, dtype=torch.float32)
    batch = torch.as_tensor(system.batch)
    return z, pos, batch


def _torchmdnet(z, batch):
    warnings.simplefilter("ignore")
    import torchmdnet.models.tensornet as tn
    from torchmdnet.models.model import load_model as tmdn_load

    from tensornet_fast.model import NAMED_MODELS

    model = tmdn_load(NAMED_MODELS["default"], derivative=True).eval()
    return (lambda p: model(z, p, batch)), f"tmdn_opt={tn.OPT}"


def single(args, env) -> list[dict]:
    import tensornet_fast as tnf
    from tensornet_fast.md import MDStep

    system = systems.single_molecule()
    z, pos, batch = _tensors(system)
    model = tnf.load_model("default")
    step = MDStep(model, z, pos, skin=0.5)
    impls = []
    for threads in (1, 2):
        impls.append(Impl("tensornet_fast", "cpu", "model", lambda p: model(z, p), threads))
        impls.append(Impl("tensornet_fast", "cpu", "md-step", step, threads))
    impls.append(Impl("tensornet_fast", "cpu", "model", lambda p: model(z, p), 2, adaptive=False))
    impls.append(Impl("tensornet_fast", "cpu", "md-step", step, 2, adaptive=False))
    # --tiny (CI smoke) leaves torchmd-net out: its 2-thread calls took ~2 s on a loaded host
    if not (args.no_tmdn or args.tiny) and importlib.util.find_spec("torchmdnet") is not None:
        try:
            call, notes = _torchmdnet(z, batch)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            print(f"torchmd-net skipped: {exc}")
        else:
            for threads in (1, 2):
                impls.append(Impl("torchmd-net", "default", "model", call, threads, notes=notes))
    interleave(impls, _inputs(pos, 50), args.rounds, args.block)
    return rows_of(impls, env, system, "latency", f"skin=0.5;rebuilds={step.rebuilds}")


def _bound(model, z, batch):
    return lambda p: model(z, p, batch)


def sizes(args, env) -> list[dict]:
    import tensornet_fast as tnf

    model = tnf.load_model("default")
    rows = []
    counts = (1, 4) if args.tiny else (1, 2, 4, 8, 16, 32, 64)
    for count in counts:
        system = systems.g2_batch(count)
        z, pos, batch = _tensors(system)
        call = _bound(model, z, batch)
        impls = [Impl("tensornet_fast", "cpu", "model", call, t, adaptive=False) for t in (1, 2)]
        interleave(impls, _inputs(pos, 20), max(3, args.rounds // 2), args.block / 2)
        rows += rows_of(impls, env, system, "latency", "scenario=sizes")
    return rows


def _cpu_us(fn, n: int) -> float:
    """Median CPU time of fn() in us over 5 blocks of n calls (process CPU time: other
    processes' load does not count, cache and frequency effects do)."""
    fn()
    out = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(n):
            fn()
        out.append((time.process_time() - t) / n * 1e6)
    return sorted(out)[2]


def breakdown(args, env) -> list[dict]:
    """Stages of the eager MDStep and of the plain call at 1 thread, by prefixes of the pipeline."""
    from torch.profiler import ProfilerActivity, profile

    import tensornet_fast as tnf
    from tensornet_fast.backends.cpu.threads import threads_for
    from tensornet_fast.md import MDStep
    from tensornet_fast.model.assembly import evaluate
    from tensornet_fast.model.inputs import prepare_system

    torch.set_num_threads(1)
    system = systems.single_molecule()
    z, pos, _ = _tensors(system)
    model = tnf.load_model("default")
    step = MDStep(model, z, pos, skin=0.5)
    n = 20 if args.tiny else 200
    backend = model.backend_impl
    edges = step.verlet

    def edges_only():
        with threads_for(pos.shape[0]):
            edges(step.pos.detach().requires_grad_(True), step.cell)

    def forward_only():
        evaluate(model, step.system, edges, forces=False)

    stages = {
        "step": _cpu_us(lambda: step(pos), n),
        "prepare_system": _cpu_us(lambda: prepare_system(model, z, pos), n),
        "neighbour_list": _cpu_us(edges_only, n),
        "forward": _cpu_us(forward_only, n),
        "weights_key": _cpu_us(
            lambda: __import__(
                "tensornet_fast.backends.shared.cache", fromlist=["weights_key"]
            ).weights_key(model),
            n,
        ),
    }
    stages["backward"] = stages["step"] - stages["forward"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            step(pos)
    events = prof.key_averages()
    # profiler times are wall times of the profiled run: kept as a share of the whole
    kernels = sum(e.self_cpu_time_total for e in events if e.key.startswith("tensornet_fast::"))
    total = sum(e.self_cpu_time_total for e in events)
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    custom = sum(e.count for e in events if e.key.startswith("tensornet_fast::"))
    notes = (
        "stages_us="
        + ",".join(f"{k}:{v:.0f}" for k, v in stages.items())
        + f";kernel_share={kernels / max(total, 1e-9):.2f};aten_ops_per_step={ops / 20:.0f}"
        + f";kernel_ops_per_step={custom / 20:.0f};backend={backend.name}"
        + ";cpu_time=process_time"
        + f";loadavg={harness.load_average()}"
    )
    print("breakdown (CPU us per step):", notes, flush=True)
    return [
        dict(
            env,
            threads=1,
            benchmark="latency",
            implementation="tensornet_fast",
            backend="cpu",
            mode="profile",
            dtype="float32",
            system=system.name,
            atoms=system.atoms,
            batch=1,
            median_s=stages["step"] * 1e-6,
            p20_s=stages["step"] * 1e-6,
            p80_s=stages["step"] * 1e-6,
            repeats=5 * n,
            ns_per_atom=stages["step"] * 1e3 / system.atoms,
            notes="model=L2-F48-K32-rc5;" + notes,
        )
    ]


# (label, module, attribute) of the functions whose ops make one stage of a plain model call
STAGES = (
    ("prepare_system", "tensornet_fast.model.module", "prepare_system"),
    ("neighbour_list", "tensornet_fast.model.assembly.SearchEdges", "__call__"),
    ("backend_setup", "tensornet_fast.backends.cpu.backend.CpuBackend", "_edges"),
    ("backend_forward", "tensornet_fast.backends.cpu.backend", "fused_forward"),
    ("backend_backward", "tensornet_fast.backends.cpu.backend", "fused_backward"),
    ("forces_scatter", "tensornet_fast.model.assembly", "edge_vec_grad_to_positions"),
    ("finite_check", "tensornet_fast.model.assembly", "check_finite_outputs"),
)


def _resolve(path: str):
    import importlib

    parts = path.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def profile(args, env) -> list[dict]:
    """Where one 22-atom call (plain ``model(z, pos)``, 1 thread) spends its time: each stage
    of STAGES wrapped in a profiler range for this run only; per stage the ops dispatched
    (aten + compiled, nested ones included) and the profiler's wall time, the compiled kernels'
    own time, and the rest ("assembly": std, energies, autograd glue). Profiler times include
    its own overhead (~1-2 us per op): read them as shares; the un-profiled CPU time per call
    is the row's median_s."""
    import functools

    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import tensornet_fast as tnf

    torch.set_num_threads(1)
    system = systems.single_molecule()
    z, pos, _ = _tensors(system)
    model = tnf.load_model("default")
    n = 10 if args.tiny else 50
    saved = []
    for label, owner, attr in STAGES:
        obj = _resolve(owner)
        fn = getattr(obj, attr)

        def wrapped(*a, _fn=fn, _label=label, **k):
            with record_function("stage." + _label):
                return _fn(*a, **k)

        saved.append((obj, attr, fn))
        setattr(obj, attr, functools.wraps(fn)(wrapped))
    try:
        for _ in range(5):
            model(z, pos)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            with record_function("stage.call"):
                for _ in range(n):
                    model(z, pos)
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)
    per_call = _cpu_us(lambda: model(z, pos), 20 if args.tiny else 200)

    def stage_of(event) -> str:
        p = event.cpu_parent
        while p is not None:
            if p.name.startswith("stage.") and p.name != "stage.call":
                return p.name[6:]
            p = p.cpu_parent
        return "assembly"

    ops: dict[str, int] = {}
    kernel_us: dict[str, float] = {}
    wall: dict[str, float] = {}
    total = 0.0
    for e in prof.events():
        if e.name == "stage.call":
            total += e.cpu_time_total
        elif e.name.startswith("stage."):
            wall[e.name[6:]] = wall.get(e.name[6:], 0.0) + e.cpu_time_total
        if e.name.startswith(("aten::", "tensornet_fast::")):
            st = stage_of(e)
            ops[st] = ops.get(st, 0) + 1
            if e.name.startswith("tensornet_fast::"):
                kernel_us[st] = kernel_us.get(st, 0.0) + e.self_cpu_time_total
    wall["assembly"] = total - sum(wall.values())
    print(f"profile: 22 atoms, 1 thread, {per_call:.0f} us CPU per call without the profiler")
    print(f"{'stage':18s} {'ops':>6s} {'us':>8s} {'kernels us':>11s} {'share':>6s}")
    for label in [s[0] for s in STAGES] + ["assembly"]:
        us = wall.get(label, 0.0) / n
        k_us = kernel_us.get(label, 0.0) / n
        print(
            f"{label:18s} {ops.get(label, 0) / n:6.0f} {us:8.0f} {k_us:11.0f} "
            f"{us / max(total / n, 1e-9):6.2f}"
        )
    notes = ";".join(
        f"{label}:{ops.get(label, 0) / n:.0f}ops/{wall.get(label, 0.0) / n:.0f}us"
        for label in [s[0] for s in STAGES] + ["assembly"]
    )
    return [
        dict(
            env,
            threads=1,
            benchmark="latency",
            implementation="tensornet_fast",
            backend="cpu",
            mode="profile-stages",
            dtype="float32",
            system=system.name,
            atoms=system.atoms,
            batch=1,
            median_s=per_call * 1e-6,
            p20_s=per_call * 1e-6,
            p80_s=per_call * 1e-6,
            repeats=n,
            ns_per_atom=per_call * 1e3 / system.atoms,
            notes="model=L2-F48-K32-rc5;profiler_us_per_call="
            + f"{total / n:.0f};"
            + notes
            + f";loadavg={harness.load_average()}",
        )
    ]


def corun(args, env) -> list[dict]:
    import tensornet_fast as tnf

    model = tnf.load_model("default")
    system = systems.g2_batch(8 if args.tiny else 64)
    z, pos, batch = _tensors(system)
    rows = []
    for phase in ("alone", "corun"):
        hog = None
        if phase == "corun":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            impls = [
                Impl("tensornet_fast", "cpu", "model", _bound(model, z, batch), t, adaptive=a)
                for t, a in ((1, True), (2, False), (2, True))
            ]
            interleave(impls, _inputs(pos, 10), args.rounds, args.block)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        rows += rows_of(impls, env, system, "latency", f"scenario=corun;phase={phase}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI)")
    parser.add_argument("--csv", default=None, help="results CSV (default bench/results)")
    parser.add_argument("--device", default="cpu", help="cpu only")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (8)")
    parser.add_argument("--block", type=float, default=None, help="seconds per block (0.5)")
    parser.add_argument("--only", default="single,sizes,breakdown,profile", help="scenarios to run")
    parser.add_argument("--corun", action="store_true", help="add the co-running scenario")
    parser.add_argument("--no-tmdn", action="store_true", help="skip torchmd-net")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        print("bench_latency measures CPU latency; --device must be cpu")
        return 2
    args.rounds = args.rounds or (2 if args.tiny else 8)
    args.block = args.block or (0.05 if args.tiny else 0.5)
    env = harness.environment("cpu")
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.corun:
        chosen.append("corun")
    rows = []
    for name in chosen:
        scenario = {
            "single": single,
            "sizes": sizes,
            "breakdown": breakdown,
            "profile": profile,
            "corun": corun,
        }[name]
        rows += scenario(args, env)
    if args.tiny:
        for row in rows:
            row["notes"] += ";tiny=1"
    harness.append_rows(rows, args.csv or harness.RESULTS_CSV)
    return 0


if __name__ == "__main__":
    sys.exit(main())
