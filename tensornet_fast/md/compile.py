"""``torch.compile(fullgraph=True)`` over energy + forces (+ stress).

``compile_model(model)`` returns a :class:`CompiledModel` called like the model
(``energy, forces = cm(z, pos, batch=None, box=None, q=None)``; ``cm.compute(..., stress=True)``
for the stress). Each call:
1. validates the inputs and builds the neighbour list eagerly (the compiled cell list of csrc/,
   host code with a data-dependent edge count) up to the largest cutoff of the model and its
   priors;
2. runs ONE compiled graph without graph breaks: edge vectors from the positions, the network,
   the reduction and the pair priors (:mod:`tensornet_fast.traceable`), and the forces by
   ``torch.autograd.grad`` inside the graph (``torch._dynamo.config.trace_autograd_ops``), so
   Inductor fuses forward and backward together.

Shapes are dynamic by default (``dynamic=True``): a new atom or edge count does not recompile.
The model's backend must be traceable (``traceable.TRACEABLE_BACKENDS``: ``"reference"`` or
``"triton"``, whose kernels are custom ops with fake implementations); the
``cpu`` backend's host-side edge loops cannot be compiled and raise :class:`NotTraceable`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..model import TensorNetModel
from ..neighbors import box_per_molecule, radius_graph_full, reject_coincident
from .traceable import Edges, check_traceable, energy_forces_stress, max_cutoff


class CompiledModel:
    """A compiled energy + forces call for ``model`` (see the module docstring)."""

    def __init__(self, model: TensorNetModel, dynamic: bool | None = True, **compile_kwargs: Any):
        check_traceable(model, "compile_model")
        self.model = model.eval()
        self._compiled = torch.compile(
            self._core, fullgraph=True, dynamic=dynamic, **compile_kwargs
        )

    def _core(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor,
        atoms_per_mol: Tensor,
        charge_factor: Tensor,
        edge_index: Tensor,
        shifts: Tensor | None,
        cell: Tensor | None,
        stress: bool,
    ):
        edges = Edges(edge_index, shifts)
        return energy_forces_stress(
            self.model,
            z,
            pos,
            batch,
            atoms_per_mol.shape[0],
            atoms_per_mol,
            charge_factor,
            edges,
            cell,
            stress=stress,
        )

    def compute(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        box: Tensor | None = None,
        q: Tensor | None = None,
        *,
        stress: bool = False,
    ) -> dict[str, Tensor]:
        """``{"energy": [n_mol, 1], "forces": [N, 3]}`` (+ ``"stress"`` [n_mol, 3, 3])."""
        model = self.model
        z, pos, batch, box, n_mol, order, charge_factor = model._prepare_call(
            z, pos, batch, box, q, stress
        )
        nl = radius_graph_full(pos.detach(), max_cutoff(model), batch, box, loop=True)
        reject_coincident(nl)
        cell = box_per_molecule(box, n_mol, pos).contiguous() if box is not None else None
        atoms_per_mol = torch.bincount(batch, minlength=n_mol)
        # No duck sizing: a molecule count of 3 must not share a symbol with the 3 of xyz
        # (it would be specialised by the 3x3 algebra, and every new count would recompile).
        with (
            torch._dynamo.config.patch(trace_autograd_ops=True),
            torch.fx.experimental._config.patch(use_duck_shape=False),
        ):
            energy, forces, sigma = self._compiled(
                z,
                pos.detach(),
                batch,
                atoms_per_mol,
                charge_factor,
                nl.edge_index,
                nl.shifts if cell is not None else None,
                cell,
                stress,
            )
        if order is not None:
            forces = torch.empty_like(forces).index_copy(0, order, forces)
        out = {"energy": energy.detach(), "forces": forces.detach()}
        if stress:
            out["stress"] = sigma.detach()
        return out

    def __call__(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        box: Tensor | None = None,
        q: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        out = self.compute(z, pos, batch, box, q)
        return out["energy"], out["forces"]


def compile_model(model: TensorNetModel, dynamic: bool | None = True, **compile_kwargs: Any):
    """``torch.compile(fullgraph=True)`` of energy + forces for a model with a traceable backend
    (load it with ``backend="reference"``). ``compile_kwargs`` go to ``torch.compile``
    (``mode=``, ``backend=``, ``options=``). The first call of each new input kind compiles
    (tens of seconds on CPU)."""
    return CompiledModel(model, dynamic=dynamic, **compile_kwargs)
