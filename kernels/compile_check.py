"""Compile every Triton kernel for a GPU target WITHOUT a GPU (Triton's ahead-of-time path:
``triton.compile`` to PTX and a cubin with its bundled ptxas), and report registers and local
memory (spills) per kernel and configuration from the bundled ``cuobjdump``.

The interpreter (TRITON_INTERPRET=1, how CI runs the kernels) does not type-check or lower
kernels the way the GPU compiler does; this catches what only the real compiler sees (types in
loops, unsupported dot shapes or dtypes, register spills) on a machine with no GPU.

    python -m tensornet_fast.kernels.compile_check [--arch 90] [--all-configs] [--dtypes fp32,fp64]

Must run with TRITON_INTERPRET unset (the kernels are then real ``JITFunction`` objects).
Exit status 1 if any kernel fails to compile.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time


def _variants(dtypes: list[str], all_configs: bool):
    """(label, JITFunction, signature, constexprs, num_warps) for every kernel to check."""
    from . import edge_passes as ep
    from . import radial_filter as rf
    from . import tensor_products as tp

    f, k = 128, 32
    out = []
    for dt in dtypes:
        ptr = f"*{dt}"

        def sig(fn, ints=(), floats=(), ptr=ptr, **cx):
            s = {}
            for name in fn.arg_names:
                if name in cx:
                    s[name] = "constexpr"
                elif name in ints:
                    s[name] = "i32"
                elif name in floats:
                    s[name] = "fp64"
                elif name in ("row_ptr_ptr", "col_ptr", "idx_ptr", "pair_ptr", "row_ptr"):
                    s[name] = "*i64"
                else:
                    s[name] = ptr
            return s, cx

        for n_hidden, inp in ((2, 256), (0, k)):
            kern = rf._radial_filter_kernel
            cx = dict(F=f, FP=f, KP=k, H0P=f, H1P=2 * f, N_HIDDEN=n_hidden, INP=inp, ACT=0, RBF=0,
                      LO=0.0, HI=5.0, ALPHA=1.0, PI=math.pi, DERIV=True, BLOCK_U=32)  # fmt: skip
            s, c = sig(kern, ints=("n_rows",), **cx)
            out.append((f"radial_filter[{dt},hidden={n_hidden}]", kern, s, c, 4))
        for tab in (False, True):
            common = dict(LO=0.0, F=f, TAB=tab, INV_H=409.6)
            tuners = (
                (ep._message_fwd_kernel, ("N_INT",)),
                (ep._embed_fwd_kernel, ("N_INT",)),
                (ep._message_dd_kernel, ("n_edges", "N_INT")),
                (ep._embed_bwd_kernel, ("n_edges", "N_INT")),
            )
            for tuner, ints in tuners:
                configs = tuner.configs if all_configs else tuner.configs[:1]
                for cfg in configs:
                    s, c = sig(tuner.fn, ints=ints, **common, **cfg.kwargs)
                    label = f"{tuner.fn.__name__}[{dt},tab={tab},{cfg.kwargs}]"
                    out.append((label, tuner.fn, s, c, cfg.num_warps))
        for fn, extra in (
            (tp._product_fwd_kernel, {"O3": True}),
            (tp._product_bwd_kernel, {"O3": True}),
            (tp._product_bwd_kernel, {"O3": False}),
            (tp._update_fwd_kernel, {}),
            (tp._update_bwd_kernel, {}),
        ):
            s, c = sig(fn, ints=("n_rows",), F=f, BLOCK_N=tp.BLOCK_N, BLOCK_F=tp.BLOCK_F, **extra)
            out.append((f"{fn.__name__}[{dt},{extra}]", fn, s, c, 4))
    return out


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, local memory bytes per thread: spills and stack) from the bundled cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True)
    regs = re.search(r"REG:(\d+)", res.stdout)
    local = re.search(r"LOCAL:(\d+)", res.stdout)
    return int(regs.group(1)) if regs else -1, int(local.group(1)) if local else -1


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (ptxas)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tensornet_fast.kernels.compile_check",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--arch", type=int, default=90, help="compute capability (90 = H100/H200)")
    p.add_argument("--dtypes", default="fp32,fp64")
    p.add_argument("--all-configs", action="store_true", help="every autotune configuration")
    p.add_argument("--fresh-cache", action="store_true",
                   help="compile into an empty TRITON_CACHE_DIR (times every variant)")  # fmt: skip
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET first", file=sys.stderr)
        return 2
    if args.fresh_cache:
        # Triton caches compiled kernels on disk: a fresh directory makes every variant really
        # compile (and be timed); without it, cached variants take ~0 s
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="tnf_compile_check_")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    total = 0.0
    variants = _variants(args.dtypes.split(","), args.all_configs)
    cpu_total = 0.0
    for label, fn, sig, cx, warps in variants:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        try:
            compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx),
                                      target=target, options={"num_warps": warps})  # fmt: skip
            seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            regs, local = _resource_usage(compiled.asm["cubin"])
            print(f"ok    {label}: {regs} registers, {local} B local memory (spills), "
                  f"{seconds:.1f} s ({cpu:.1f} s CPU)", flush=True)  # fmt: skip
        except Exception as exc:  # report every failure, then fail
            seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            failed += 1
            first = str(exc).strip().splitlines()
            print(f"FAIL  {label}: {type(exc).__name__}: {first[0] if first else ''}")
        total += seconds
        cpu_total += cpu
    # What a GPU host's first call pays per variant (with --fresh-cache): CPU seconds, since
    # this project's shared 2-core VM inflates wall time several-fold (docs/gpu.md).
    print(f"{len(variants)} variant(s) compiled in {total:.1f} s ({cpu_total:.1f} s CPU)")
    print(f"{failed} kernel variant(s) failed to compile for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
