"""``torch.compile(fullgraph=True)`` over energy + forces (+ stress).

``compile_model(model)`` returns a :class:`CompiledModel` called like the model
(``energy, forces = cm(z, pos, batch=None, box=None, q=None)``; ``cm.compute(..., stress=True)``
for the stress). Each call:
1. validates the inputs and builds the neighbour list eagerly (the compiled cell list of csrc/,
   host code with a data-dependent edge count) up to the largest cutoff of the model and its
   priors;
2. runs ONE compiled graph without graph breaks: the model's one assembly
   (``model.assembly.evaluate``) over the given edges (``md.traceable.GivenEdges``: edge vectors
   from the positions, the network, the reduction and the pair priors), and the forces by
   ``torch.autograd.grad`` inside the graph (``torch._dynamo.config.trace_autograd_ops``), so
   Inductor fuses forward and backward together.

Shapes are dynamic by default (``dynamic=True``): a new atom or edge count does not recompile.
The model's backend must be traceable (``"reference"`` or ``"triton"``, whose kernels are custom
ops with fake implementations); the ``cpu`` backend's host-side edge loops cannot be compiled
and raise :class:`~tensornet_fast.errors.NotTraceable`. The backend's derived state (tables,
padded weights) is prepared before tracing; when the weights change, the next call prepares it
again and traces anew.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..backends.shared.cache import weight_tensors, weights_key
from ..model import TensorNetModel
from ..model.assembly import (
    autograd_allowed,
    check_finite_outputs,
    evaluate,
    max_cutoff,
    normal_tensor,
)
from ..model.inputs import System, prepare_system
from ..neighbors import radius_graph_full, reject_coincident
from .traceable import Edges, GivenEdges, check_traceable


class CompiledModel:
    """A compiled energy + forces call for ``model`` (see the module docstring)."""

    def __init__(self, model: TensorNetModel, dynamic: bool | None = True, **compile_kwargs: Any):
        check_traceable(model, "compile_model")
        self.model = model.eval()
        self._compile = lambda: torch.compile(
            self._core, fullgraph=True, dynamic=dynamic, **compile_kwargs
        )
        self._compiled = self._compile()
        # the key, and the tensors it names (kept alive so their addresses cannot be reused)
        self._weights, self._keep = weights_key(model), weight_tensors(model)

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
        system = System(z, pos, batch, atoms_per_mol.shape[0], atoms_per_mol, cell, charge_factor)
        edges = GivenEdges(self.model, batch, Edges(edge_index, shifts))
        out = evaluate(self.model, system, edges, forces=True, stress=stress, static=True)
        return out["energy"], out["forces"], out.get("stress")

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
        if torch.is_inference_mode_enabled():  # forces are autograd results: record them
            with autograd_allowed():
                args = (normal_tensor(t) for t in (z, pos, batch, box, q))
                return self.compute(*args, stress=stress)
        model = self.model
        if weights_key(model) != self._weights:  # derived state and the trace follow weights
            check_traceable(model, "compile_model")
            self._compiled, self._weights = self._compile(), weights_key(model)
            self._keep = weight_tensors(model)
        system = prepare_system(model, z, pos, batch, box, q, stress=stress)
        cell = system.cell
        nl = radius_graph_full(
            system.pos.detach(), max_cutoff(model), system.batch, cell, loop=True
        )
        reject_coincident(nl)
        # No duck sizing: a molecule count of 3 must not share a symbol with the 3 of xyz
        # (it would be specialised by the 3x3 algebra, and every new count would recompile).
        with (
            torch._dynamo.config.patch(trace_autograd_ops=True),
            torch.fx.experimental._config.patch(use_duck_shape=False),
        ):
            energy, forces, sigma = self._compiled(
                system.z,
                system.pos.detach(),
                system.batch,
                system.atoms_per_mol,
                system.charge_factor,
                nl.edge_index,
                nl.shifts if cell is not None else None,
                cell,
                stress,
            )
        if system.order is not None:
            forces = torch.empty_like(forces).index_copy(0, system.order, forces)
        out = {"energy": energy.detach(), "forces": forces.detach()}
        if stress:
            out["stress"] = sigma.detach()
        check_finite_outputs(model, out, system)
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
