"""The ONE assembly of a model's outputs: energy, forces, stress and per-atom energies from a
checked :class:`~.inputs.System` and a source of edges. Eager calls (``TensorNetModel.compute``),
``torch.compile`` (``md.compile``), the fixed-size MD step (``md.step``) and export
(``md.export``) all run :func:`evaluate`; they differ only in where the edges come from:

* eager: :class:`SearchEdges`, the radius graph searched on the (strained) positions;
* traced: ``md.traceable.GivenEdges``, a fixed, possibly padded and over-complete edge list whose
  geometry is computed from the positions inside the traced graph.

Energy (docs/spec.md "Output and energy"): epsilon_i from the backend, times std, plus the
Atomref prior, summed per molecule (divided by atoms + 1 for ``reduce_op="mean"``, as torchmd-net
does), plus mean, plus the pair priors (ZBL, D2) over the pairs within their own cutoffs. Forces
are -dE/dpos; stress is (1/V) dE/d(strain) under a homogeneous deformation of cell and positions,
symmetrised; both by autograd through the backend's (hand-written or autograd) backward, or,
for energy + forces alone on a backend with ``direct_forces``, from its vector-Jacobian product
without recording a graph (the same numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from ..backends import for_call
from ..errors import InputError
from ..neighbors import NeighborList, radius_graph_full, reject_coincident
from ..neighbors.search import compiled_device_ok, compiled_search, edge_vec_grad_to_positions
from .inputs import System
from .priors import atomref_energy, d2_from_edges, zbl_from_edges

# (positions [N, 3], cell [n_mol, 3, 3] or None) -> (the network's edges, the pair priors' edges)
EdgeSource = Callable[[Tensor, Tensor | None], tuple[NeighborList, NeighborList]]

PAIR_PRIORS = ("ZBL", "D2")


def max_cutoff(model) -> float:
    """The largest distance any part of the model looks at (network and pair priors)."""
    cut = model.config.cutoff_upper
    for spec, prior in zip(model.config.priors, model.prior_model or []):
        if spec.name in PAIR_PRIORS:
            cut = max(cut, prior.cutoff_distance)
    return cut


def has_pair_priors(model) -> bool:
    return any(spec.name in PAIR_PRIORS for spec in model.config.priors)


class SearchEdges:
    """Eager edges: one radius graph (compiled cell list) per call, searched up to the largest
    cutoff of the network and its pair priors. The network gets exactly the pairs within
    [cutoff_lower, cutoff_upper) plus one self-loop per atom (none for models without
    ``self_loops``: matgl's); the pair priors pick theirs from the same list by distance.
    Subclasses replace ``search`` (``md.step``: a Verlet list's candidates cut to the same
    pairs) and keep the split."""

    def __init__(self, model, batch: Tensor):
        c = model.config
        self.batch = batch
        self.cutoff = max_cutoff(model)
        self.lower = 0.0 if has_pair_priors(model) else c.cutoff_lower
        self.network_range = (c.cutoff_lower, c.cutoff_upper)
        self.loop = c.self_loops

    def search(self, positions: Tensor, cell: Tensor | None) -> NeighborList:
        """Every pair within [lower, cutoff) and one self-loop per atom (if the model has
        them), sorted by receiver."""
        if cell is None and compiled_device_ok(positions.device):
            # open boundaries: prepare_system checked the positions and sorted the batch, so
            # radius_graph_full's checks (~35 us of a 22-atom call) would repeat them
            return compiled_search(positions, self.cutoff, self.batch, None, self.loop, self.lower)
        return radius_graph_full(
            positions, self.cutoff, self.batch, cell, loop=self.loop, cutoff_lower=self.lower
        )

    def __call__(self, positions: Tensor, cell: Tensor | None) -> tuple[NeighborList, NeighborList]:
        nl = self.search(positions, cell)
        # Distance 0 on exactly the N self-loops (none without them), else two atoms coincide:
        # reject_coincident names them (one count instead of its four ops on every call).
        if int((nl.edge_dist == 0).sum()) != (positions.shape[0] if self.loop else 0):
            reject_coincident(nl)
        return self.split(nl)

    def split(self, nl: NeighborList) -> tuple[NeighborList, NeighborList]:
        """(the network's edges, the pair priors' edges) of one searched list."""
        lo, hi = self.network_range
        if (self.lower, self.cutoff) == (lo, hi):
            return nl, nl
        i, j = nl.edge_index
        d = nl.edge_dist.detach()
        is_self = (i == j) & (nl.shifts == 0).all(1)
        return nl.select(is_self | ((d >= lo) & (d < hi))), nl


def _pair_prior_terms(model, z: Tensor, nl: NeighborList) -> list[tuple[Tensor, Tensor]]:
    """(halved energy of each directed pair [E], receiving atom [E]) of every ZBL / D2 prior, in
    checkpoint order: pairs within the prior's cutoff, no self-loops or padding; D2 without
    periodic images (as torchmd-net 3.1). Other edges contribute exact zeros."""
    if not has_pair_priors(model):
        return []
    i, j = nl.edge_index
    dist = nl.edge_dist
    zero_shift = (nl.shifts == 0).all(1)
    real = ~((i == j) & zero_shift)
    if nl.valid is not None:
        real = real & nl.valid
    terms = []
    for spec, prior in zip(model.config.priors, model.prior_model or []):
        if spec.name not in PAIR_PRIORS:
            continue
        keep = real & (dist < prior.cutoff_distance)
        if spec.name == "D2":
            keep = keep & zero_shift
        safe = torch.where(keep, dist, torch.ones_like(dist))
        fn = zbl_from_edges if spec.name == "ZBL" else d2_from_edges
        pair = torch.where(keep, fn(prior, z, nl.edge_index, safe), torch.zeros_like(dist))
        terms.append((pair, i))
    return terms


def _scaled(model, eps: Tensor, z: Tensor) -> Tensor:
    """epsilon_i * std (+ Atomref), per atom [N, 1]."""
    eps = eps * model.std
    for spec, prior in zip(model.config.priors, model.prior_model or []):
        if spec.name == "Atomref":
            eps = eps + atomref_energy(prior, z)
    return eps


def _energies(model, system: System, scaled: Tensor, pairs: list) -> Tensor:
    """Energies [n_mol, 1]: per-atom terms summed per molecule in torchmd-net's order (in
    float32 another order moves the result by ~1e-6), the mean, then the pair priors.
    scatter_add, not index_add: the same sums in the same order, and Inductor (torch 2.13, CPU,
    dynamic shapes) fails to generate code for an index_add into a size-1 output."""
    batch = system.batch
    y = torch.zeros(system.n_mol, 1, dtype=scaled.dtype, device=scaled.device)
    y = y.scatter_add(0, batch[:, None], scaled)
    if model.config.reduce_op == "mean":
        # torchmd-net reduces with scatter_reduce(..., "mean") on a zero tensor, whose
        # include_self=True counts the zero: the divisor is n_atoms + 1. Trained models
        # learned that divisor, so it is reproduced.
        y = y / (system.atoms_per_mol.to(y.dtype) + 1)[:, None]
    y = y + model.mean
    for pair, receiver in pairs:
        mol = batch.index_select(0, receiver)
        y = y + torch.zeros_like(y[:, 0]).scatter_add(0, mol, pair)[:, None]
    return y


def _energy_weights(model, system: System, eps: Tensor) -> Tensor:
    """d(sum of the energies)/d(epsilon_i) [N, 1]: the energy is affine in epsilon_i
    (``_scaled``, ``_energies``), so this is std, over atoms + 1 for ``reduce_op="mean"``; the
    same ops in the same order as autograd's backward through them (the same bits)."""
    w = torch.ones(system.n_mol, 1, dtype=eps.dtype, device=eps.device)
    if model.config.reduce_op == "mean":
        w = w / (system.atoms_per_mol.to(w.dtype) + 1)[:, None]
    return w.index_select(0, system.batch) * model.std


def _atom_energies(model, system: System, scaled: Tensor, pairs: list) -> Tensor:
    """Per-atom energies [N] summing (to rounding) to the energies: epsilon_i * std (+ Atomref)
    reduced as torchmd-net does, an equal share of the mean, and half of each pair prior term
    the atom receives."""
    batch, count = system.batch, system.atoms_per_mol.to(scaled.dtype)
    e = scaled[:, 0]
    if model.config.reduce_op == "mean":
        e = e / (count + 1).index_select(0, batch)
    e = e + (model.mean / count.clamp_min(1)).index_select(0, batch)
    for pair, receiver in pairs:
        e = e.index_add(0, receiver, pair)
    return e


def det3(cells: Tensor) -> Tensor:
    """Determinants of [..., 3, 3] cells as triple products (plain aten ops; no LAPACK call in
    traced or exported graphs)."""
    return (cells[..., 0, :] * torch.linalg.cross(cells[..., 1, :], cells[..., 2, :])).sum(-1)


class _FirstOrderOnly(torch.autograd.Function):
    """Forces / stress of a backend without second derivatives, kept attached to the caller's
    positions: differentiating them again raises a clear error instead of a silent zero or an
    autograd internals message."""

    @staticmethod
    def forward(ctx, value: Tensor, leaf: Tensor, backend: str) -> Tensor:
        ctx.backend = backend
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        raise InputError(
            f"backend {ctx.backend!r} gives forces and stress, not their derivatives: load the "
            "model with backend='reference' for Hessians or other double derivatives"
        )


def check_finite_outputs(model, out: dict[str, Tensor], system: System) -> None:
    """Raise ``InputError`` when an output is NaN or inf (one reduction and one host read per
    call; eager calls synchronise anyway). The inputs were checked, so the likely causes are
    named: non-finite or extreme weights, or an overflow inside the network."""
    values = [v for v in out.values() if v.is_floating_point()]
    flags = torch.stack([torch.isfinite(v).all() for v in values])
    if bool(flags.all()):
        return
    bad = [k for k, v in out.items() if not bool(torch.isfinite(v).all())]
    raise InputError(
        f"the model returned NaN/inf {' and '.join(bad)} "
        f"(molecules {_bad_molecules(out, system)}): {_likely_cause(model)}"
    )


def _bad_molecules(out: dict[str, Tensor], system: System) -> list[int]:
    bad = ~torch.isfinite(out["energy"].detach()).all(1)
    if "forces" in out:
        atoms = ~torch.isfinite(out["forces"].detach()).all(1)
        if system.order is not None:
            atoms = atoms[system.order]
        bad = bad.clone()
        bad[system.batch[atoms]] = True
    return torch.nonzero(bad).flatten()[:5].tolist()


def _likely_cause(model) -> str:
    with torch.no_grad():
        named = list(model.named_parameters()) + list(model.named_buffers())
        for name, t in named:
            if t.is_floating_point() and not name.endswith((".C_6", ".R_r")):
                if not bool(torch.isfinite(t).all()):
                    return f"the weight {name} holds NaN/inf"
        top = max(
            (float(t.abs().max()), name) for name, t in named if t.is_floating_point() and t.numel()
        )
    if top[0] > 1e4:
        return (
            f"the weights are extreme (|{top[1]}| reaches {top[0]:.3g}): an overflow inside "
            "the network; check the checkpoint or the edit that changed them"
        )
    return (
        "an overflow inside the network (weights up to "
        f"|{top[1]}| = {top[0]:.3g}); try precision=64 or check the inputs' units"
    )


def evaluate(
    model,
    system: System,
    edges: EdgeSource,
    *,
    forces: bool = True,
    stress: bool = False,
    atom_energies: bool = False,
    static: bool = False,
    gradient_of: Tensor | None = None,
) -> dict[str, Tensor]:
    """``{"energy": [n_mol, 1]}`` plus, as requested, ``forces`` [N, 3], ``stress``
    [n_mol, 3, 3] and ``atom_energies`` [N], in the caller's atom order.

    ``static``: a traced / captured call (no host synchronisation, static shapes): the backend
    runs its traceable path, or the reference math when it has none. Otherwise, when the caller
    keeps an autograd graph (``pos.requires_grad`` under grad mode, or training mode), outputs
    stay attached to it: energies differentiate through the backend's own backward, forces and
    stress are differentiable again where the backend has second derivatives (reference) and
    raise a clear error on a second derivative elsewhere. Training mode (gradients w.r.t. the
    weights) runs the reference math on backends without parameter gradients.

    ``gradient_of`` [n_mol]: forces and stress are the derivatives of sum_m gradient_of[m] E_m
    instead of sum_m E_m (the LAMMPS package: molecule 0 = the rank's own atoms, 1 = its ghost
    atoms, whose energies belong to other ranks but whose positions move molecule 0's)."""
    pos = system.pos
    keep_graph = not static and (model.training or (pos.requires_grad and torch.is_grad_enabled()))
    backend = for_call(
        model.backend_impl,
        pos.device,
        parameter_gradients=model.training and not static,
        traced=static,
    )
    second_order = keep_graph and backend.parameter_gradients
    if stress and system.cell is None:
        raise ValueError("stress needs a periodic cell")
    # Energy + forces only (no stress, no graph kept, no pair priors) on a backend with its own
    # vector-Jacobian product: no autograd graph, no engine, no edge-vector nodes (22 atoms:
    # see docs/performance.md section 11). The same numbers as the autograd branch.
    direct = (
        forces
        and gradient_of is None
        and not (stress or keep_graph or static or has_pair_priors(model))
        and backend.direct_forces(model)
    )
    by_autograd = forces and not direct
    with backend.threads(pos.shape[0]), torch.set_grad_enabled(by_autograd or stress or keep_graph):
        leaf = pos if keep_graph and pos.requires_grad else pos.detach().requires_grad_(by_autograd)
        positions, cell = leaf, system.cell
        if stress:
            strain = torch.zeros_like(system.cell).requires_grad_(True)
            deform = torch.eye(3, dtype=cell.dtype, device=cell.device) + strain
            positions = torch.einsum("na,nab->nb", leaf, deform.index_select(0, system.batch))
            cell = system.cell @ deform
        network_edges, pair_edges = edges(positions, cell)
        if direct:
            eps, vjp = backend.atomic_energies_vjp(
                model, system.z, network_edges, system.charge_factor
            )
        else:
            eps = backend.atomic_energies(
                model, system.z, network_edges, system.charge_factor, static=static
            )
        scaled = _scaled(model, eps, system.z)
        pairs = _pair_prior_terms(model, system.z, pair_edges)
        energy = _energies(model, system, scaled, pairs)
        out = {"energy": energy}
        if atom_energies:
            out["atom_energies"] = _atom_energies(model, system, scaled, pairs)
        inputs = ([leaf] if by_autograd else []) + ([strain] if stress else [])
        grads = []
        if direct:
            g_vec = vjp(_energy_weights(model, system, eps))  # dE/d(edge_vec) [E, 3]
            n = pos.shape[0]
            grads = [edge_vec_grad_to_positions(g_vec, network_edges.edge_index, n)]
        elif inputs:
            total = energy.sum() if gradient_of is None else (energy[:, 0] * gradient_of).sum()
            grads = torch.autograd.grad(
                total, inputs, create_graph=second_order, retain_graph=keep_graph
            )
        if forces:
            out["forces"] = -grads[0]
        if stress:
            volume = det3(system.cell.detach()).abs()
            virial = grads[-1]
            out["stress"] = 0.5 * (virial + virial.transpose(1, 2)) / volume[:, None, None]
        if keep_graph and not second_order and leaf.requires_grad:
            for key in ("forces", "stress"):
                if key in out:
                    out[key] = _FirstOrderOnly.apply(out[key], leaf, backend.name)
    if system.order is not None:
        for key in ("forces", "atom_energies"):
            if key in out:
                out[key] = torch.empty_like(out[key]).index_copy(0, system.order, out[key])
    if not keep_graph:
        out = {k: v.detach() for k, v in out.items()}
    if not static:  # traced / captured calls cannot synchronise: their callers check
        check_finite_outputs(model, out, system)
    return out


def autograd_allowed():
    """A context that lets autograd record (forces are dE/dpos) under a caller's
    ``torch.inference_mode()``; a no-op otherwise."""
    if torch.is_inference_mode_enabled():
        return torch.inference_mode(False)
    return contextlib.nullcontext()


def normal_tensor(t):
    """``t`` as a tensor autograd can record (a clone of an inference-mode tensor)."""
    if isinstance(t, Tensor) and t.is_inference():
        return t.clone()
    return t
