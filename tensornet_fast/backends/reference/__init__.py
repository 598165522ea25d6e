"""The reference backend: TensorNet in plain PyTorch with 3x3 matrices, as docs/spec.md writes
it (``math.py``). Forces, stress, parameter gradients and Hessians come from autograd through
it; every faster backend is tested against it. Traceable (torch.compile, export, CUDA graphs)."""

from __future__ import annotations

from torch import Tensor

from ..base import Backend
from .math import atomic_energies


class ReferenceBackend(Backend):
    name = "reference"
    traceable = True
    parameter_gradients = True

    def atomic_energies(self, model, z: Tensor, nl, charge_factor: Tensor, *, static=False):
        return atomic_energies(
            model.representation_model,
            model.output_model,
            model.config,
            z,
            nl.edge_index,
            nl.edge_vec,
            nl.edge_dist,
            charge_factor,
        )


__all__ = ["ReferenceBackend"]
