"""What a backend is given and what it returns.

A backend computes the network's per-atom outputs epsilon_i [N, 1] from the atom types, a
neighbour list and the per-atom charge factor, with the model's weights. Everything around that
-- input checks, the neighbour search, std / priors / reduction, forces and stress by autograd
-- is the model's one assembly (``tensornet_fast.model.assembly``), the same for every backend.
Backends import ``backends.shared`` and this module, never each other.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..model.module import TensorNetModel
    from ..neighbors.graph import NeighborList

FILTER_MODES = ("exact", "tabulated")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One warning per process and ``key`` (auto-selection fallbacks, ignored inputs)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


class Backend:
    """One way of computing epsilon_i. Instances are made by ``backends.select`` (the one
    place a backend request is resolved) and kept by the model for its lifetime."""

    name: ClassVar[str]
    # Runs under torch.compile / torch.export / CUDA-graph capture: static shapes for static
    # inputs, no host synchronisation (``atomic_energies(..., static=True)``).
    traceable: ClassVar[bool] = False
    # Gives gradients with respect to the weights and double backward (training, Hessians).
    parameter_gradients: ClassVar[bool] = False
    # filter_mode values it accepts besides "auto".
    filter_modes: ClassVar[tuple[str, ...]] = ("exact",)

    def __init__(self, explicit: bool = True):
        # True when asked for by name; False when "auto" picked it (it may then be re-picked
        # for another device, with one warning, instead of raising).
        self.explicit = explicit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(explicit={self.explicit})"

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this machine cannot run the backend, or None when it can."""
        return None

    def runs_on(self, device: torch.device) -> bool:
        """Whether its kernels take tensors on ``device`` here."""
        return True

    def resolve_filter_mode(self, model: TensorNetModel, requested: str) -> str:
        """The concrete filter mode ("exact" | "tabulated") for the model's request
        ("auto" | "exact" | "tabulated"), resolved per call (dtype and weights may change)."""
        return "exact" if requested == "auto" else requested

    def threads(self, n_atoms: int):
        """A context manager for one call on ``n_atoms`` atoms: the CPU thread count it runs
        with (default: torch's, unchanged)."""
        return contextlib.nullcontext()

    def prepare(self, model: TensorNetModel) -> None:
        """Build state derived from the weights at load time instead of on the first call."""

    def direct_forces(self, model: TensorNetModel) -> bool:
        """Whether ``atomic_energies_vjp`` runs for this model (default: no). The assembly then
        takes energy + forces without recording an autograd graph (``model.assembly``)."""
        return False

    def atomic_energies_vjp(
        self, model: TensorNetModel, z: Tensor, nl: NeighborList, charge_factor: Tensor
    ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(epsilon_i [N, 1] detached, vjp) where vjp(g_eps [N, 1]) = dE/d(edge_vec) [E, 3]
        for dE/d(epsilon_i) = g_eps; ``nl`` as for ``atomic_energies`` but detached. Only
        called where ``direct_forces(model)``; the same numbers as autograd through
        ``atomic_energies``."""
        raise NotImplementedError

    def atomic_energies(
        self,
        model: TensorNetModel,
        z: Tensor,
        nl: NeighborList,
        charge_factor: Tensor,
        *,
        static: bool = False,
    ) -> Tensor:
        """epsilon_i [N, 1] (before std, priors and reduction).

        ``z`` [N] int64 atom types; ``nl`` edges sorted by receiver with both directions of every
        pair and one self-loop (d = 0) per atom, differentiable ``edge_vec`` / ``edge_dist``;
        with ``static`` (traceable backends only) the list may be padded (``nl.valid``) and hold
        pairs beyond the cutoff, whose terms are exact zeros; ``charge_factor`` [N] is
        1 + 0.1 q of the atom's molecule (1 for models without charge)."""
        raise NotImplementedError
