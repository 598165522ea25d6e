"""The Triton backend's memory plan, measured on CPU: peak bytes of live tensors during one
energy + forces call, per atom and per edge, extrapolated to 1M water atoms.

How it measures (no GPU needed):
- ``LiveBytes`` is a ``TorchDispatchMode`` that sees every tensor an operator returns (the
  Triton ops' outputs included: they are ``torch.library`` custom ops), keeps a weak reference
  to each new storage and its size, and after every operator sums the storages still alive: the
  peak of that sum is what a caching allocator must hold at least (the CUDA allocator rounds
  each block up to 512 B, and big ones to 2 MB segments: < 1 % at these sizes). Temporaries an
  operator frees before it returns (workspace inside one aten kernel) are not seen.
- ``fake_kernels()`` replaces the ``@triton.jit`` kernels with stand-ins that only fill their
  output arguments, so the backend's whole Python-level plan (the launchers' allocations, what
  autograd saves, the backward's buffers) runs at sizes the interpreter could never reach;
  ``tests/backends/test_memory_plan.py`` checks that the interpreter's real kernels give the
  same peak at a small size.
- Fit: peak = a * atoms + b * edges over water boxes at two cutoffs (different edges per atom),
  least squares; the 1M-atom estimate takes the measured edges per atom of r_c = 5 water
  (~53.5 with the self-loop).

    TRITON_INTERPRET=1 python -m bench.memory_plan [--sizes 1500,3000] [--mode tabulated]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The benchmark model of docs/gpu.md: TensorNet 2 layers, F = 128, K = 32, r_c = 5, O(3).
BENCH_MODEL = dict(embedding_dimension=128, num_layers=2, num_rbf=32, cutoff_upper=5.0, max_z=20)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the ``with`` block and alive at the
    same time (storages that existed before are not counted)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[object, int, str]] = {}
        self.current = 0
        self.peak = 0
        self.peak_at = ""
        self.at_peak: list[tuple[str, int]] = []  # (creating op, bytes) alive at the peak

    def _sweep(self) -> None:
        dead = [k for k, (ref, _, _) in self.live.items() if ref() is None]
        for k in dead:
            self.current -= self.live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self.live or storage.nbytes() == 0:
                    continue
                ref = _storage_ref(t)
                if ref is None:
                    continue
                self.live[key] = (ref, storage.nbytes(), str(func))
                self.current += storage.nbytes()
        if self.current > self.peak:
            self.peak, self.peak_at = self.current, str(func)
            self.at_peak = [(op, n) for _, n, op in self.live.values()]
        return out


def _storage_ref(t: torch.Tensor):
    """A callable that returns a live object while ``t``'s storage is alive, else None."""
    from torch.multiprocessing.reductions import StorageWeakRef

    ref = StorageWeakRef(t.untyped_storage())
    return lambda: None if ref.expired() else True


_OUTPUT_ARGS = ("out_ptr", "gd_ptr", "ggeo_ptr", "val_ptr", "der_ptr", "gy_ptr", "gm_ptr",
                "gdx_ptr")  # fmt: skip


class _FakeKernel:
    """Stands in for a ``@triton.jit`` (or autotuned) kernel: ``kernel[grid](*args, **kw)``
    fills the tensors passed as output arguments with 0.01 and computes nothing."""

    def __init__(self, kernel):
        while hasattr(kernel, "fn"):  # Autotuner -> JITFunction / InterpretedFunction -> function
            kernel = kernel.fn
        self.arg_names = list(inspect.signature(kernel).parameters)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            for name, value in zip(self.arg_names, args):
                if name in _OUTPUT_ARGS and isinstance(value, torch.Tensor):
                    value.fill_(0.01)

        return launch


KERNELS = {
    "edges": ("_message_fwd_kernel", "_message_dd_kernel", "_embed_fwd_kernel",
              "_embed_bwd_kernel"),
    "filt": ("_radial_filter_kernel",),
    "prod": ("_product_fwd_kernel", "_product_bwd_kernel", "_update_fwd_kernel",
             "_update_bwd_kernel"),
}  # fmt: skip


@contextlib.contextmanager
def fake_kernels():
    """Replace every Triton kernel of the backend with a ``_FakeKernel`` (restored on exit)."""
    from tensornet_fast.backends.triton.backend import load_kernels

    mods = load_kernels()
    saved = []
    try:
        for key, names in KERNELS.items():
            for name in names:
                saved.append((mods[key], name, getattr(mods[key], name)))
                setattr(mods[key], name, _FakeKernel(getattr(mods[key], name)))
        yield
    finally:
        for mod, name, kernel in saved:
            setattr(mod, name, kernel)


def bench_model(mode: str = "tabulated", dtype=torch.float32, cutoff: float = 5.0, **over):
    """A TensorNet with the benchmark model's shape and random weights on the triton backend
    (CPU tensors: TRITON_INTERPRET=1 must be set before Triton is imported)."""
    from tensornet_fast.model.config import ModelConfig
    from tensornet_fast.model.module import TensorNetModel

    cfg = {**BENCH_MODEL, "cutoff_upper": cutoff, **over}
    cfg["precision"] = 64 if dtype == torch.float64 else 32
    model = TensorNetModel(ModelConfig(**cfg), backend="triton", filter_mode=mode)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    model.eval()
    model.backend_impl.prepare(model)
    return model


@dataclasses.dataclass
class Measurement:
    atoms: int
    edges: int
    cutoff: float
    mode: str
    peak_bytes: int
    graph_bytes: int  # the radius graph alone (inside peak_bytes)
    peak_at: str

    @property
    def per_atom(self) -> float:
        return self.peak_bytes / self.atoms


def measure(model, atoms: int, seed: int = 0, fake: bool = True, plain: bool = False,
            stress: bool = False) -> Measurement:  # fmt: skip
    """Peak live bytes of ``model.compute(forces=True)`` on a periodic water box; ``plain``:
    with plain autograd instead of the lean backward (``LEAN_BACKWARD = False``)."""
    from bench import systems
    from tensornet_fast.backends.triton import backend as triton_backend

    s = systems.water_box(atoms, seed)
    z = torch.as_tensor(s.z)
    pos = torch.as_tensor(s.pos, dtype=model.dtype)
    box = torch.as_tensor(s.box, dtype=model.dtype)
    ctx = fake_kernels() if fake else contextlib.nullcontext()
    lean = triton_backend.LEAN_BACKWARD
    try:
        triton_backend.LEAN_BACKWARD = not plain
        with ctx:
            model.compute(z, pos, box=box, stress=stress)  # warm: derived state, tables
            with LiveBytes() as graph_only:
                nl = model.neighbor_list(pos, torch.zeros_like(z), box)
            edges = int(nl.num_edges)
            del nl
            with LiveBytes() as live:
                out = model.compute(z, pos, box=box, stress=stress)
            del out
    finally:
        triton_backend.LEAN_BACKWARD = lean
    return Measurement(
        s.atoms, edges, model.cutoff, model.filter_mode, live.peak, graph_only.peak, live.peak_at
    )


def fit(rows: list[Measurement]) -> tuple[float, float]:
    """(bytes per atom, bytes per edge) of peak = a * atoms + b * edges, least squares."""
    a = torch.tensor([[m.atoms, m.edges] for m in rows], dtype=torch.float64)
    y = torch.tensor([m.peak_bytes for m in rows], dtype=torch.float64)
    sol = torch.linalg.lstsq(a, y[:, None]).solution[:, 0]
    return float(sol[0]), float(sol[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1500,3000,6000", help="water atoms per run (r_c = 5)")
    p.add_argument("--small-cutoff", type=float, default=4.0,
                   help="second cutoff, for the per-edge term (middle size)")  # fmt: skip
    p.add_argument("--mode", default="tabulated", choices=("tabulated", "exact"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--target", type=int, default=1_000_000, help="atoms to extrapolate to")
    p.add_argument("--json", default=None, help="write the measurements and the fit here")
    p.add_argument("--plain", action="store_true",
                   help="also plain autograd (no lean backward), middle size")  # fmt: skip
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("memory_plan: set TRITON_INTERPRET=1 (CPU tensors)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = getattr(torch, args.dtype)
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    model = bench_model(args.mode, dtype, 5.0)
    for n in sizes:
        rows.append(measure(model, n))
    small = bench_model(args.mode, dtype, args.small_cutoff)
    rows.append(measure(small, sizes[len(sizes) // 2]))
    per_atom, per_edge = fit(rows)
    plain = None
    if args.plain:
        plain = measure(model, sizes[len(sizes) // 2], plain=True)
    r5 = [m for m in rows if m.cutoff == 5.0]
    edges_per_atom = r5[-1].edges / r5[-1].atoms
    total = args.target * (per_atom + per_edge * edges_per_atom)
    for m in rows:
        graph = m.graph_bytes / m.atoms / 1024
        print(f"{m.mode:9s} r_c={m.cutoff:g} atoms={m.atoms:7d} edges={m.edges:9d} "
              f"peak={m.peak_bytes / 2**20:9.1f} MiB ({m.per_atom / 1024:6.1f} KiB/atom; "
              f"radius graph {graph:5.1f} KiB/atom) at {m.peak_at}")  # fmt: skip
    if plain is not None:
        print(f"plain autograd (no lean backward) atoms={plain.atoms}: "
              f"peak={plain.peak_bytes / 2**20:.1f} MiB ({plain.per_atom / 1024:.1f} KiB/atom) "
              f"at {plain.peak_at}")  # fmt: skip
    print(f"fit: {per_atom:.0f} B/atom + {per_edge:.1f} B/edge; r_c=5 water: "
          f"{edges_per_atom:.1f} edges/atom -> {per_atom + per_edge * edges_per_atom:.0f} B/atom; "
          f"{args.target} atoms: {total / 1e9:.1f} GB")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                dict(rows=[dataclasses.asdict(m) for m in rows], bytes_per_atom=per_atom,
                     bytes_per_edge=per_edge, edges_per_atom=edges_per_atom,
                     target_atoms=args.target, target_bytes=total),
                fh, indent=1,
            )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
