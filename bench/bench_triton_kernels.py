"""Per-kernel times of the Triton ops against their PyTorch references (kernels/reference.py,
the same functions tests/test_triton_kernels.py checks them against), with achieved GB/s and
GFLOP/s from a minimal-traffic model of each op. Forward and backward (force) kernels.

Water box (TensorNet F=128, K=32, r_c=5; --tiny: F=16, 192 atoms), float32, one row per
(op, implementation). On CPU the kernels only run under TRITON_INTERPRET=1 (a test vehicle: the
rows are marked ``interpreter=1`` and mean nothing as timings); the numbers that matter come from
the GPU lane (bench/run_gpu.sh).

    python -m bench.bench_triton_kernels [--tiny] [--csv PATH] [--device cuda] [--atoms N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from bench import harness

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _setup(atoms: int, f: int, k: int, device: str, tiny: bool):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from oracle import make_checkpoint
    from systems import water_box

    import tensornet_fast as tnf

    per_side = max(2, round((atoms / 3) ** (1 / 3)))
    z, pos, box = water_box(per_side, dtype=torch.float32)
    folder = os.path.join(tempfile.gettempdir(), "tensornet_fast_bench")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"kernels_F{f}_K{k}.ckpt")
    if not os.path.exists(path):
        make_checkpoint(path, seed=3, precision=32, embedding_dimension=f, num_rbf=k,
                        cutoff_upper=5.0 if not tiny else 3.0)  # fmt: skip
    model = tnf.load_model(path, backend="triton", device=device)
    nl = tnf.radius_graph_full(pos.to(device), model.cutoff, box=box.to(device), loop=True)
    return model, nl


def _cases(model, nl, device: str):
    """(name, kernel callable, reference callable, bytes, flops) per op."""
    from tensornet_fast.backends.triton import backend as triton_backend
    from tensornet_fast.kernels import edge_passes, reference, tensor_products
    from tensornet_fast.kernels.radial_filter import radial_filter

    f = model.config.embedding_dimension
    n, e = nl.row_ptr.shape[0] - 1, nl.edge_dist.shape[0]
    item = 4
    d = nl.edge_dist.contiguous()
    row, col = nl.edge_index[0].contiguous(), nl.edge_index[1].contiguous()
    filters = triton_backend._Filters(model, d, deriv=True)
    tab, dtab, idx, lo, inv_h, tabm = filters.args[1]
    g = torch.Generator(device=device).manual_seed(0)
    y = torch.randn(n, 9, f, device=device, generator=g)
    m = torch.randn(n, 9, f, device=device, generator=g)
    q = torch.ones(n, device=device)
    f_edge = tab[idx]  # [E, 3F]: what the unfused reference must materialise
    w = triton_backend.filter_weights(model)[1]
    rep = model.representation_model
    layer = rep.layers[0]
    d_unique = torch.unique(d)
    u = d_unique.shape[0]
    k_rbf = model.config.num_rbf
    mlp_flops = 2 * (k_rbf * f + 2 * f * f + 6 * f * f)
    node = n * 9 * f * item
    return [
        ("radial_filter", lambda: radial_filter(d_unique, w, True),
         lambda: torch.func.jvp(lambda x: reference.radial_filter_ref(rep, layer, model.config, x),
                                (d_unique,), (torch.ones_like(d_unique),)),
         u * (item + 2 * 3 * f * item), u * 2 * mlp_flops),
        ("message_fwd",
         lambda: edge_passes.message(y, d, nl.row_ptr, row, col, tab, dtab, idx, lo, inv_h, tabm),
         lambda: reference.message_ref(y, f_edge, row, col),
         2 * node + e * (2 * 8 + 3 * f * item), e * 9 * f * 2),
        ("message_bwd_dd",
         lambda: edge_passes.message_backward(y, m, d, row, col, tab, dtab, idx, lo, inv_h, tabm),
         None, e * (3 * 8 + 6 * f * item) + 2 * node, e * 9 * f * 3),
        ("product_fwd", lambda: tensor_products.product(y, m, q, True),
         lambda: reference.product_ref(y, m, q, True), 3 * node, n * f * (2 * 45 + 40)),
        ("product_bwd", lambda: tensor_products.product_backward(y, m, q, m, True),
         None, 5 * node, n * f * (6 * 45 + 80)),
        ("update_fwd", lambda: tensor_products.update(y, m, q),
         lambda: reference.update_ref(y, m, q), 3 * node, n * f * 60),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_triton_kernels", description=__doc__)
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    p.add_argument("--csv", default=harness.RESULTS_CSV)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--atoms", type=int, default=12000)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    interpreter = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if args.device.startswith("cpu") and not interpreter:
        print("bench_triton_kernels: the kernels need CUDA (or TRITON_INTERPRET=1, which is not "
              "a benchmark); nothing measured", file=sys.stderr)  # fmt: skip
        return 0
    f, k, atoms, repeats = 128, 32, args.atoms, args.repeats
    if args.tiny:
        f, k, atoms, repeats = 16, 8, 192, 2
    model, nl = _setup(atoms, f, k, args.device, args.tiny)
    env = harness.environment(args.device)
    n, e = nl.row_ptr.shape[0] - 1, nl.edge_dist.shape[0]
    rows = []
    for name, kernel, ref, nbytes, flops in _cases(model, nl, args.device):
        for impl, fn in (("triton", kernel), ("torch-reference", ref)):
            if fn is None:
                continue
            t = harness.time_call(lambda _k, fn=fn: fn(), args.device, repeats=repeats)
            mem = harness.peak_memory_mb(fn, args.device)
            notes = [f"op={name}", f"F={f}", f"K={k}"]
            if interpreter:
                notes.append("interpreter=1")
            if args.tiny:
                notes.append("tiny=1")
            rows.append({
                **env, "benchmark": "triton_kernels", "implementation": impl, "backend": name,
                "mode": "exact", "dtype": "float32", "system": f"water{n}", "atoms": n,
                "edges": e, "batch": 1, **t, "ns_per_atom": t["median_s"] / n * 1e9,
                "peak_mem_mb": mem, "gbps": nbytes / t["median_s"] / 1e9,
                "gflops": flops / t["median_s"] / 1e9, "notes": ";".join(notes),
            })  # fmt: skip
            print(f"{name:16s} {impl:16s} {t['median_s'] * 1e3:9.3f} ms "
                  f"{rows[-1]['gbps']:8.1f} GB/s {rows[-1]['gflops']:8.1f} GFLOP/s",
                  file=sys.stderr)  # fmt: skip
    harness.append_rows(rows, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
