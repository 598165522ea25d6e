"""Export a model for C++ hosts: ``torch.export`` + AOTInductor package (``.pt2``) computing
energy and forces (and, for periodic cells, the stress) of one molecule / cell, runnable through
``torch::inductor::AOTIModelPackageLoader`` without Python (``examples/cpp/run_exported.cpp``).

How (the route that works with torch 2.13; torch.export of autograd.grad itself does not): the
energy + autograd forces are traced with ``make_fx(tracing_mode="symbolic")`` over the
parameters passed as inputs (so the backward is already explicit aten ops), the trace is wrapped
in a module holding the weights,
exported with ``torch.export.export(strict=False)`` with a dynamic atom count, and compiled by
``torch._inductor.aoti_compile_and_package``.

Neighbour list inside the graph: :func:`tensornet_fast.md.traceable.dense_edges`, a brute-force
search in plain aten ops (``nonzero`` gives the data-dependent edge count). It needs no custom op,
so the package runs in any libtorch program (the compiled cell list of ``csrc/`` would have to be
linked into every host as a ``TORCH_LIBRARY`` and given a fake kernel; a Python custom op cannot
run from C++ at all). Its cost is O(N^2) time and memory: a [N, N, (2 images + 1)^3, 3]
difference tensor (~0.3 GB in float32 for a 5000-atom molecule or a 1000-atom cell with
images=1). Meant for molecules and small cells, not for large systems.

Package inputs / outputs (model dtype for floats, int64 atom types):
  molecule (``periodic=False``):  (z [N], pos [N, 3])           -> (energy [1, 1], forces [N, 3])
  periodic (``periodic=True``):   (z [N], pos [N, 3], box [3, 3]) -> (energy, forces, stress [3, 3])
N >= 2. The package's metadata (``AOTIModelPackageLoader::get_metadata()``) records cutoff,
images, dtype, max_z and the input/output names, so a host can validate its inputs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError, NotTraceable
from ..model import TensorNetModel, load_model
from ..model.assembly import evaluate, max_cutoff
from ..model.inputs import System
from .traceable import Edges, GivenEdges, check_traceable, dense_edges, dense_max_atoms

FORMAT_VERSION = "1"
LAMMPS_FORMAT_VERSION = "1"


def _energy_forces(model: TensorNetModel, periodic: bool, images: int, charge: float):
    """The function make_fx traces: (params, z, pos[, box]) -> outputs."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    cutoff = max_cutoff(model)

    def fn(params: list[Tensor], z: Tensor, pos: Tensor, *rest: Tensor):
        box = rest[0] if periodic else None
        state = dict(zip(names, params))
        with torch.nn.utils.stateless._reparametrize_module(model, state):
            n = pos.shape[0]
            batch = torch.zeros_like(z)
            atoms = torch.full((1,), n, dtype=torch.long, device=z.device)
            factor = 1.0 + 0.1 * charge if model.config.charge else 1.0
            charge_factor = torch.full((n,), factor, dtype=pos.dtype, device=pos.device)
            cell = box[None] if periodic else None
            system = System(z, pos, batch, 1, atoms, cell, charge_factor)
            edges = GivenEdges(model, batch, dense_edges(pos, cutoff, box, images))
            out = evaluate(model, system, edges, forces=True, stress=periodic, static=True)
        if periodic:
            return out["energy"], out["forces"], out["stress"][0]
        return out["energy"], out["forces"]

    return fn, names


def outer_products_as_mul(gm: torch.fx.GraphModule) -> int:
    """Rewrite every ``mm(a [M, 1], b [1, N])`` (an outer product: the backward of a linear
    layer with one output, the head's last layer) as the broadcast ``a * b``, in place; returns
    how many. Why: Inductor's CPU lowering of mm decomposes such a product only when
    ``M + N <= 32`` and decides it by GUARDING on the symbolic atom count M with the example's
    size, so the bundled model (head width 24) compiled a package valid for at most 8 atoms
    ("Expected u0 <= 64 but received 81": ethanol's 9 x 9 candidate pairs, torch 2.13). With no
    such mm left there is nothing to guard on; ``a * b`` is the same product."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.mm.default:
            continue
        a, b = node.args[:2]
        inner = a.meta["val"].shape[-1]
        if not isinstance(inner, int) or inner != 1:
            continue
        with gm.graph.inserting_before(node):
            product = gm.graph.call_function(torch.ops.aten.mul.Tensor, (a, b))
        product.meta = dict(node.meta)
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


class _Exported(torch.nn.Module):
    """The traced graph with the weights as buffers (export's inputs are z, pos[, box])."""

    def __init__(self, gm: torch.fx.GraphModule, tensors: list[Tensor], periodic: bool):
        super().__init__()
        self.gm = gm
        self.count = len(tensors)
        self.periodic = periodic
        self.images = 1
        for k, t in enumerate(tensors):
            self.register_buffer(f"w{k}", t.detach().clone())

    def forward(self, z: Tensor, pos: Tensor, box: Tensor | None = None):
        params = [getattr(self, f"w{k}") for k in range(self.count)]
        if self.periodic:
            return self.gm(params, z, pos, box)
        return self.gm(params, z, pos)


def _example_inputs(model: TensorNetModel, periodic: bool) -> tuple[Tensor, ...]:
    """A small, valid system to trace with (the traced graph is shape-generic)."""
    g = torch.Generator().manual_seed(0)
    n = 5
    z = torch.randint(1, min(model.config.max_z, 10), (n,), generator=g)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * 3.0
    pos = pos.to(model.dtype)
    if periodic:
        side = max(2.0 * max_cutoff(model), 6.0)
        return z, pos, torch.eye(3, dtype=model.dtype) * side
    return z, pos


def trace_model(
    model: TensorNetModel, periodic: bool = False, images: int = 1, charge: float = 0.0
) -> torch.nn.Module:
    """make_fx trace of energy + forces (+ stress): a module ``(z, pos[, box]) -> outputs`` made
    of aten ops only (what export and AOTInductor compile)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    check_traceable(model, "export")
    if model.config.element_types is not None:
        # The exported graph takes z as embedding rows; a host would have to map atomic numbers
        # to matgl's element_types itself, and an unknown element would index out of range.
        raise InputError(
            "export of models with an element list (matgl models) is not supported: the "
            "exported program would take embedding rows, not atomic numbers"
        )
    if model.backend != "reference":
        # The Triton kernels are Python custom ops: an AOTInductor package holding them cannot
        # run from C++ without Python. The reference math decomposes to aten.
        raise NotTraceable(
            f"export needs backend='reference' (this model uses {model.backend!r}, whose custom "
            "ops a C++ host cannot run); load_model(path, backend='reference') and export that"
        )
    _check_export_args(model, periodic, images, charge)
    model = model.eval()
    fn, names = _energy_forces(model, periodic, images, charge)
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    tensors = [state[n].detach() for n in names]
    example = _example_inputs(model, periodic)
    gm = make_fx(fn, tracing_mode="symbolic")(tensors, *example)
    outer_products_as_mul(gm)  # no size guard from the example (issue #24)
    module = _Exported(gm, tensors, periodic)
    module.images = images
    return module


def _check_export_args(model, periodic, images, charge) -> None:
    if not isinstance(periodic, bool):
        raise InputError(f"periodic must be True or False, got {periodic!r}")
    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= 8:
        raise InputError(
            f"images must be an integer 1..8 (periodic images searched per axis), got {images!r}"
        )
    if isinstance(charge, bool) or not isinstance(charge, (int, float)):
        raise InputError(f"charge must be a number, got {charge!r}")
    if not math.isfinite(charge):
        raise InputError(f"charge must be finite, got {charge}")


def max_atoms(model: TensorNetModel, periodic: bool, images: int) -> int:
    """The largest atom count a package accepts: the dense_edges memory budget (recorded in the
    metadata; the package refuses larger inputs through its dynamic-shape bounds)."""
    return dense_max_atoms(model.dtype, periodic, images)


def export_program(module: _Exported, model: TensorNetModel) -> torch.export.ExportedProgram:
    images = int(module.images)
    top = max(3, min(1 << 20, max_atoms(model, module.periodic, images)))
    atoms = torch.export.Dim("atoms", min=2, max=top)
    example = _example_inputs(model, module.periodic)
    shapes: dict[str, Any] = {"z": {0: atoms}, "pos": {0: atoms}}
    if module.periodic:
        shapes["box"] = None
    return torch.export.export(module, example, dynamic_shapes=shapes, strict=False)


def metadata(model: TensorNetModel, periodic: bool, images: int, charge: float) -> dict:
    c = model.config
    return {
        "tensornet_fast_export": FORMAT_VERSION,
        "dtype": "float64" if model.dtype == torch.float64 else "float32",
        "cutoff": repr(float(c.cutoff_upper)),
        "max_cutoff": repr(float(max_cutoff(model))),
        "max_z": str(int(c.max_z)),
        "periodic": "1" if periodic else "0",
        "images": str(int(images)),
        "max_atoms": str(max(3, min(1 << 20, max_atoms(model, periodic, images)))),
        "charge": repr(float(charge)) if c.charge else "",
        "inputs": "z,pos,box" if periodic else "z,pos",
        "outputs": "energy,forces,stress" if periodic else "energy,forces",
    }


# ------------------------------------------------------------------------------------- LAMMPS
# The package the LAMMPS pair style (tensornet_fast/integrations/lammps/) runs, on one MPI rank's
# atoms: its own ("local") atoms first, then the ghost atoms it needs as nodes of the graph.
#   inputs:  z [N] int64, pos [N, 3], edge_index [2, E] int64 (receiver, sender; sorted by
#            receiver, one self-loop (i, i) per node), offsets [E, 3] (edge vector =
#            pos[i] - pos[j] + offset: a periodic image folded onto its owner), n_local [1] int64
#   outputs: energy [1] (the local atoms' energy, model.mean included once), atom_energies [N]
#            (valid for the local atoms), forces [N, 3] = -d(energy)/d(pos) on every node (ghost
#            nodes' forces belong to other ranks: LAMMPS sends them home), virial [3, 3] =
#            -d(energy)/d(strain), symmetric (sum r (x) f; LAMMPS's convention).
# How: the rank's atoms are molecule 0 and its ghost nodes molecule 1 of one System with an
# identity cell per molecule (the offsets are Cartesian), run through the one assembly with
# gradient_of = (1, 0); the virial is the sum of both molecules' strain derivatives (one
# homogeneous deformation of every edge vector).
LAMMPS_INPUTS = "z,pos,edge_index,offsets,n_local"
LAMMPS_OUTPUTS = "energy,atom_energies,forces,virial"


def lammps_model(model: TensorNetModel, backend: str = "cpu") -> TensorNetModel:
    """The model as the LAMMPS package traces it: with ``backend="cpu"`` a shallow copy (same
    weights) whose cpu backend runs its traced path through the compiled kernels
    (``backends/cpu/static.py``); ``"reference"``: the plain-aten math (a package that needs
    no tensornet_fast library in the host, several times slower)."""
    from ..backends.cpu import CpuBackend

    c = model.config
    if c.reduce_op != "add":
        raise InputError(
            f"reduce_op={c.reduce_op!r}: the energy is not a sum of atomic energies, so it "
            "cannot be split over LAMMPS's ranks and ghost atoms (reduce_op='add' only)"
        )
    if backend == "cpu":
        from .. import _extension

        if _extension.ops() is None:
            raise NotTraceable(
                "the LAMMPS package with backend='cpu' needs the compiled extension "
                "(python setup.py build_ext --inplace); or export with backend='reference'"
            )
        traced = copy.copy(model)  # shares parameters, buffers and derived state
        traced.backend_impl = CpuBackend(explicit=True, traceable=True)
        return traced
    if backend == "reference":
        if model.backend == "reference":
            return model
        from ..backends import select

        traced = copy.copy(model)
        traced.backend_impl = select("reference", model.device)
        return traced
    raise InputError(f"backend must be 'cpu' or 'reference' for a LAMMPS package, got {backend!r}")


def _lammps_fn(model: TensorNetModel, charge: float):
    factor = 1.0 + 0.1 * charge if model.config.charge else 1.0

    def fn(z: Tensor, pos: Tensor, edge_index: Tensor, offsets: Tensor, n_local: Tensor):
        n = pos.shape[0]
        batch = (torch.arange(n, device=z.device) >= n_local).long()  # 0 local, 1 ghost
        atoms = torch.cat((n_local, n - n_local))
        cell = torch.eye(3, dtype=pos.dtype, device=pos.device).expand(2, 3, 3)
        charge_factor = torch.full((n,), factor, dtype=pos.dtype, device=pos.device)
        system = System(z, pos, batch, 2, atoms, cell, charge_factor)
        edges = GivenEdges(model, batch, Edges(edge_index, offsets))
        weights = torch.tensor([1.0, 0.0], dtype=pos.dtype, device=pos.device)
        out = evaluate(
            model,
            system,
            edges,
            forces=True,
            stress=True,
            atom_energies=True,
            static=True,
            gradient_of=weights,
        )
        # stress = sym(dE/dstrain) / det(cell) per molecule, det = 1: their sum is the derivative
        # under one homogeneous strain of every edge vector
        virial = -out["stress"].sum(0)
        return out["energy"][0], out["atom_energies"], out["forces"], virial

    return fn


def lammps_example(model: TensorNetModel) -> tuple[Tensor, ...]:
    """A small graph as the pair style passes it: 6 atoms (4 local), all pairs within the
    cutoff, self-loops, receiver-sorted, one periodic-image edge."""
    from ..neighbors import radius_graph_full

    g = torch.Generator().manual_seed(0)
    n = 6
    z = torch.randint(1, min(model.config.max_z, 10), (n,), generator=g)
    pos = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2.5).to(model.dtype)
    nl = radius_graph_full(pos, float(max_cutoff(model)), loop=True)
    offsets = torch.zeros(nl.edge_index.shape[1], 3, dtype=model.dtype)
    return z, pos, nl.edge_index.contiguous(), offsets, torch.tensor([4])


def trace_lammps(model: TensorNetModel, charge: float = 0.0, backend: str = "cpu"):
    """make_fx trace of the LAMMPS package's function (see LAMMPS_INPUTS / LAMMPS_OUTPUTS)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.utils.stateless import _reparametrize_module

    traced = lammps_model(model.eval(), backend)
    check_traceable(traced, "the LAMMPS export")
    # the weights, tables and packed weights are real tensors: constants of the graph
    fn = make_fx(_lammps_fn(traced, charge), tracing_mode="symbolic", _allow_non_fake_inputs=True)
    # The parameters are TrackedParameters (backends/shared/cache.py), which make_fx cannot
    # take as constants ("Multiple dispatch failed for aten.index", e.g. the Atomref prior's
    # weight[z]): plain detached views of the same storages stand in for them while tracing.
    plain = {name: p.detach() for name, p in traced.named_parameters(remove_duplicate=False)}
    with torch.no_grad(), _reparametrize_module(traced, plain):
        gm = fn(*lammps_example(model))
    outer_products_as_mul(gm)
    return gm


def export_lammps_program(gm: torch.fx.GraphModule, model: TensorNetModel):
    atoms = torch.export.Dim("atoms", min=2, max=1 << 24)
    edges = torch.export.Dim("edges", min=2, max=1 << 30)
    shapes = ({0: atoms}, {0: atoms}, {1: edges}, {0: edges}, None)
    example = lammps_example(model)
    return torch.export.export(gm, example, dynamic_shapes=shapes, strict=False)


def lammps_metadata(model: TensorNetModel, charge: float, backend: str) -> dict:
    c = model.config
    names = [spec.name for spec in c.priors]
    return {
        "tensornet_fast_lammps": LAMMPS_FORMAT_VERSION,
        "dtype": "float64" if model.dtype == torch.float64 else "float32",
        "cutoff": repr(float(c.cutoff_upper)),
        "max_cutoff": repr(float(max_cutoff(model))),
        # message passes: the embedding and each interaction layer look one cutoff further
        "num_layers": str(int(c.num_layers)),
        "max_z": str(int(c.max_z)),
        "mean": repr(float(model.mean)),
        "d2": "1" if "D2" in names else "0",
        "charge": repr(float(charge)) if c.charge else "",
        "backend": backend,
        "inputs": LAMMPS_INPUTS,
        "outputs": LAMMPS_OUTPUTS,
    }


# ------------------------------------------------------------------------------- export_model
def export_model(
    model_or_path: TensorNetModel | str | os.PathLike = "default",
    out_path: str | os.PathLike = "tensornet.pt2",
    *,
    periodic: bool = False,
    images: int = 1,
    charge: float = 0.0,
    precision: int | None = None,
    lammps: bool = False,
    backend: str | None = None,
    verbose: bool = False,
    log: Callable[[str], None] | None = None,
    **load_kwargs: Any,
) -> str:
    """Write an AOTInductor package computing energy + forces (+ stress when ``periodic``), or
    with ``lammps`` the package of the LAMMPS pair style ``tensornet``.

    Args:
        model_or_path: a :class:`TensorNetModel` (its weights are copied; for the molecule /
            periodic packages its backend must be ``"reference"``) or a checkpoint path /
            ``"default"`` (loaded here).
        out_path: the ``.pt2`` file to write.
        periodic: the package takes a cell ``box`` [3, 3] (rows a, b, c) and also returns the
            stress (1/V) dE/d(strain); without it the system is an isolated molecule.
        images: periodic images searched per axis (-images..images). The result is exact for
            cells whose plane spacings are all >= cutoff / images (the metadata records both;
            ``examples/cpp/run_exported.cpp`` checks it).
        charge: total charge, baked in, for models trained with ``charge: true``.
        precision: 32 or 64 to convert a checkpoint on load (default: the checkpoint's).
        lammps: the LAMMPS package (docs/lammps.md): one rank's atoms and ghost atoms with a
            given edge list in, energy, per-atom energies, forces and virial out.
        backend: LAMMPS package only: ``"cpu"`` (default; the compiled kernels, the host loads
            tensornet_fast's operator library) or ``"reference"`` (plain aten ops).
        verbose: print the stage lines to stderr (when no ``log`` is given).
        log: called with a line as each stage starts and ends, with elapsed seconds
            (``tensornet-fast export`` prints them: compilation takes minutes).
        **load_kwargs: passed to :func:`load_model` (e.g. ``layout=``).

    Returns the package path. Takes minutes, most of it AOTInductor's C++ compilation (a C++
    compiler is needed at export time, not to run the package): the bundled model's molecule
    package took 423-531 s on the shared 2-core development VM (load ~6; 531 s = trace 54 s,
    export 73 s, compile 404 s). The package takes any atom count from 2 up to its ``max_atoms``.
    """
    if precision not in (None, 32, 64):
        raise InputError(f"precision must be 32, 64 or None, got {precision!r}")
    if verbose and log is None:

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    t_start = time.perf_counter()

    def stage(msg: str) -> None:
        if log is not None:
            log(f"[{time.perf_counter() - t_start:6.1f} s] {msg}")

    if lammps and periodic:
        raise InputError("--lammps packages take LAMMPS's own cell handling: drop --periodic")
    if not lammps and backend not in (None, "reference"):
        raise InputError(
            f"backend={backend!r}: molecule / periodic packages run the reference math "
            "(backend='reference'); the cpu kernels are for the LAMMPS package (lammps=True)"
        )
    backend = backend or ("cpu" if lammps else "reference")
    if isinstance(model_or_path, TensorNetModel):
        model = model_or_path
        if precision is not None:
            model = model.to(torch.float64 if precision == 64 else torch.float32)
    else:
        overrides = {} if precision is None else {"precision": precision}
        model = load_model(
            model_or_path, backend="reference", device="cpu", **overrides, **load_kwargs
        )
    if model.device.type != "cpu":
        raise InputError("export_model traces on CPU: pass a model on the CPU (model.cpu())")
    out_path = os.fspath(out_path)
    if lammps:
        stage(f"model loaded; tracing energy, forces and virial for LAMMPS (backend {backend})")
        gm = trace_lammps(model, charge=charge, backend=backend)
        stage("traced; exporting the graph (torch.export, dynamic atom and edge counts)")
        program = export_lammps_program(gm, model)
        meta = lammps_metadata(model, charge, backend)
    else:
        stage("model loaded; tracing energy and forces (make_fx)")
        module = trace_model(model, periodic=periodic, images=images, charge=charge)
        stage("traced; exporting the graph (torch.export)")
        program = export_program(module, model)
        meta = metadata(model, periodic, images, charge)
    stage("exported; compiling C++ with AOTInductor (the long stage: minutes on 2 cores)")
    path = torch._inductor.aoti_compile_and_package(
        program, package_path=out_path, inductor_configs={"aot_inductor.metadata": meta}
    )
    stage(f"compiled and packaged: {path} {json.dumps(meta)}")
    return path


def load_exported(path: str | os.PathLike):
    """The package as a Python callable (for tests and checks; C++ hosts use
    ``torch::inductor::AOTIModelPackageLoader``)."""
    return torch._inductor.aoti_load_package(os.fspath(path))
