"""torch.library.opcheck on every compiled op of tensornet_fast._C (csrc/registration.cpp).

opcheck calls the op with the given arguments and checks its schema against what the kernel
does (mutations and aliasing declared, test_schema), the fake kernel against the real one
(shapes, dtypes, strides, test_faketensor; fakes in backends/cpu/fakes.py and
neighbors/fakes.py), the autograd registration, and tracing through AOTAutograd with dynamic
shapes (test_aot_dispatch_dynamic, what torch.compile / torch.export do).

The arguments are those of real calls: the bundled default model (F=48, 2 layers) runs energy
and forces on a small batch of molecules with the ops wrapped by a recorder (exact and
tabulated filters, float32 and float64), plus a Verlet list update and a static-capacity graph
for the radius graph's other ops. Only tanh's tangent (the default model uses SiLU) and the
activation variants of the row-wise MLP are built directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tensornet_fast as tnf
from tensornet_fast import _extension
from tensornet_fast.neighbors import StaticRadiusGraph, VerletList, radius_graph_full

OPS = _extension.ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="tensornet_fast._C is not built")

# Every op of csrc/registration.cpp (test_every_op_is_checked keeps this list complete).
CPU_OPS = [
    "cpu_gemm_pack",
    "cpu_embed_fwd",
    "cpu_embed_bwd",
    "cpu_layer_fwd",
    "cpu_layer_bwd",
    "cpu_embed_combine_fwd",
    "cpu_embed_combine_bwd",
    "cpu_sq_norms",
    "cpu_sq_norms_bwd",
    "cpu_spline_locate",
    "cpu_rows_fwd",
    "cpu_rows_bwd",
    "cpu_tanh_jvp_",
    "cpu_bias_act_jvp_",
    "cpu_cutoff_jvp",
]
GRAPH_OPS = ["radius_graph", "filter_pairs", "radius_graph_plan", "radius_graph_static"]
# The CUDA path compiled for the host: called with the arguments of the op it emulates.
EMULATED = {
    "radius_graph_cuda_emulated": "radius_graph",
    "filter_pairs_cuda_emulated": "filter_pairs",
    "radius_graph_static_cuda_emulated": "radius_graph_static",
}


def _copy(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_copy(v) for v in x)
    return x


class _Recorder:
    """Stands in for torch.ops.tensornet_fast: records a copy of each call's arguments (taken
    before the call, as in-place ops change them), then runs the real op."""

    def __init__(self, real):
        self.real = real
        self.calls: dict[str, list[tuple]] = {}

    def __getattr__(self, name):
        op = getattr(self.real, name)

        def call(*args):
            self.calls.setdefault(name, []).append(_copy(args))
            return op(*args)

        return call


def _molecules(dtype):
    """Three small g2-like molecules as one batch (z, pos, batch), 17 atoms."""
    from ase.build import molecule

    zs, ps, bs = [], [], []
    for k, name in enumerate(("CH3CH2OH", "H2O", "CH4")):
        atoms = molecule(name)
        zs.append(atoms.numbers)
        ps.append(atoms.positions + 3.0 * k)
        bs.append(np.full(len(atoms), k))
    return (
        torch.as_tensor(np.concatenate(zs)),
        torch.as_tensor(np.concatenate(ps), dtype=dtype),
        torch.as_tensor(np.concatenate(bs)),
    )


_CAPTURED: dict = {}


def _capture(dtype) -> dict[str, list[tuple]]:
    """Arguments of every op call of the cpu backend (both filter modes) and of the radius
    graph (open and periodic search, Verlet filter, static plan and search) in ``dtype``."""
    if dtype in _CAPTURED:
        return _CAPTURED[dtype]
    rec = _Recorder(OPS)
    saved = _extension._STATE["ops"]  # every caller asks _extension.ops() per call
    _extension._STATE["ops"] = rec
    try:
        z, pos, batch = _molecules(dtype)
        precision = 64 if dtype == torch.float64 else 32
        for mode in ("exact", "tabulated"):
            model = tnf.load_model("default", backend="cpu", filter_mode=mode, precision=precision)
            energy, forces = model(z, pos, batch)
            assert torch.isfinite(forces).all()
        box = torch.diag(torch.tensor([7.0, 8.0, 9.0], dtype=dtype))
        radius_graph_full(pos[:9], 3.0, box=box, loop=True, cutoff_lower=0.5)
        verlet = VerletList(3.0, 1.0, loop=True)
        verlet.update(pos, batch)
        verlet.update(pos + 0.1, batch)  # no rebuild: filter_pairs on the candidates
        graph = StaticRadiusGraph(3.0, 400, pos, batch, loop=True)
        graph(pos)
    finally:
        _extension._STATE["ops"] = saved
    _CAPTURED[dtype] = rec.calls
    return rec.calls


def _op(name):
    return getattr(torch.ops.tensornet_fast, name).default


# Ops called with more than one kind of argument: which recorded call each variant takes.
_FILTER_ARG = {"cpu_embed_fwd": 6, "cpu_embed_bwd": 9, "cpu_layer_fwd": 9, "cpu_layer_bwd": 14}
VARIANTS = {
    # exact filters (table rows, s = None) / tabulated (spline, local coordinate s)
    **{
        name: {
            "exact": lambda a, k=k: a[k] is None,
            "tabulated": lambda a, k=k: a[k] is not None,
        }
        for name, k in _FILTER_ARG.items()
    },
    "radius_graph": {"open": lambda a: a[2] is None, "periodic": lambda a: a[2] is not None},
}
VARIANTS["radius_graph_cuda_emulated"] = VARIANTS["radius_graph"]


def _cases():
    """(op name, dtype, variant); cpu_gemm_pack packs float32 weights only (float64: an empty
    output, checked too)."""
    return [
        (name, dt, variant)
        for name in CPU_OPS + GRAPH_OPS + list(EMULATED)
        for dt in (torch.float32, torch.float64)
        for variant in VARIANTS.get(name, {"": None})
    ]


def _args(name, dtype, variant):
    if name == "cpu_tanh_jvp_":  # the default model's activation is SiLU: built here
        gen = torch.Generator().manual_seed(0)
        t = torch.tanh(torch.randn(37, 48, dtype=dtype, generator=gen))
        return (torch.randn(37, 48, dtype=dtype, generator=gen), t)
    calls = _capture(dtype).get(EMULATED.get(name, name))
    assert calls, f"{name} was not called by the model / neighbour list run"
    if not variant:
        return calls[0]
    pick = VARIANTS[name][variant]
    return next(args for args in calls if pick(args))


def _id(v):
    return str(v).replace("torch.", "") if v != "" else "-"


# Every test_util on every op: test_schema catches an undeclared mutation or alias, and
# test_aot_dispatch_dynamic runs the in-place ops (Tensor(a!) arguments) through
# auto_functionalize and the data-dependent outputs (radius_graph, filter_pairs,
# radius_graph_plan: new unbacked sizes in their fakes) as unbacked symbols.
TEST_UTILS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
)


@pytest.mark.parametrize(("name", "dtype", "variant"), _cases(), ids=_id)
def test_opcheck(name, dtype, variant):
    torch.library.opcheck(_op(name), _args(name, dtype, variant), test_utils=TEST_UTILS)


def test_every_op_is_checked():
    """These lists hold every op the extension registers (a new op needs a case here)."""
    registered = {
        op.split("::", 1)[1]
        for op in torch._C._dispatch_get_all_op_names()
        if op.startswith("tensornet_fast::")
    }
    assert registered == set(CPU_OPS + GRAPH_OPS + list(EMULATED))
