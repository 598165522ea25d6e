"""The user-facing model: ``load_model(...)`` returns a :class:`TensorNetModel` that is called
like torchmd-net's ``TorchMD_Net``:
``energy, forces = model(z, pos, batch=None, box=None, q=None)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..backends import FILTER_MODES, Backend, select
from ..backends.shared.cache import track_parameters
from ..backends.shared.tables import filter_tables
from ..errors import CheckpointError, InputError
from ..neighbors import NeighborList
from .assembly import SearchEdges, autograd_allowed, evaluate, max_cutoff, normal_tensor
from .config import ModelConfig
from .elements import symbol, symbols
from .formats import read_model
from .inputs import default_box, prepare_system
from .params import PRIOR_PARAMS, OutputParams, RepresentationParams

_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
NAMED_MODELS = {"default": os.path.join(_DATA_DIR, "default.ckpt")}


class TensorNetModel(nn.Module):
    """TensorNet energies and forces; parameters named as in torchmd-net's ``TorchMD_Net``.

    The backend is chosen once, here (``backends.select``); ``backend`` is its name and
    ``backend_impl`` the object."""

    def __init__(
        self,
        config: ModelConfig,
        derivative: bool = True,
        backend: str | Backend = "auto",
        filter_mode: str = "auto",
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if not isinstance(derivative, bool):
            raise InputError(f"derivative must be True or False, got {derivative!r}")
        self.config = config
        self.derivative = derivative
        self.elements: tuple[int, ...] | None = None  # trained elements; set by load_model
        self.backend_impl = select(backend, _device(device))
        self.filter_mode = filter_mode  # validated by the setter; kept as filter_request
        self.representation_model = RepresentationParams(config)
        self.output_model = OutputParams(config)
        priors = [PRIOR_PARAMS[spec.name](spec, config) for spec in config.priors]
        self.prior_model = nn.ModuleList(priors) if priors else None
        self.register_buffer("mean", torch.zeros((), dtype=config.dtype))
        self.register_buffer("std", torch.ones((), dtype=config.dtype))
        track_parameters(self)  # p.data edits bump the version the derived state is keyed on

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> str:
        return self.backend_impl.name

    @property
    def dtype(self) -> torch.dtype:
        return self.representation_model.linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.representation_model.linear.weight.device

    @property
    def cutoff(self) -> float:
        return self.config.cutoff_upper

    @property
    def max_cutoff(self) -> float:
        """The largest distance any part of the model looks at (network and pair priors)."""
        return max_cutoff(self)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"F={c.embedding_dimension}, layers={c.num_layers}, rbf={c.rbf_type}x{c.num_rbf}, "
            f"cutoff=({c.cutoff_lower}, {c.cutoff_upper}), "
            f"group={c.equivariance_invariance_group}, "
            f"backend={self.backend!r}, filter_mode={self.filter_mode!r}"
        )

    @property
    def filter_mode(self) -> str:
        """The radial filters the next call uses, "exact" or "tabulated". ``filter_request``
        "auto" is "tabulated" on the cpu backend in float32 when every table's measured error
        is within the float32 rounding of the exact filter (``shared.tables.TableCheck``; one
        warning and "exact" otherwise), and "exact" in float64 and on the other backends.
        Resolved per call, so ``model.to(torch.float64)`` turns an auto model exact."""
        return self.backend_impl.resolve_filter_mode(self, self.filter_request)

    @filter_mode.setter
    def filter_mode(self, mode: str) -> None:
        if mode not in ("auto",) + FILTER_MODES:
            raise InputError(f"filter_mode must be 'auto' or one of {FILTER_MODES}, got {mode!r}")
        if mode != "auto" and mode not in self.backend_impl.filter_modes:
            raise InputError(
                f"filter_mode={mode!r} needs a backend that has it (cpu, triton); "
                f"backend {self.backend!r} has {self.backend_impl.filter_modes}"
            )
        self.filter_request = mode

    def domain_issues(self, z, q=None) -> list[str]:
        """Why this input is outside what the model was trained on, in words (empty when it is
        not): elements outside ``elements`` (by symbol), a nonzero total charge for a model
        trained without charges. ``z``: atomic numbers (tensor, array or list); ``q``: total
        charge(s) or None. Atom types the model cannot take at all are errors of the call
        itself (``InputError``), not listed here."""
        zs = sorted({int(v) for v in torch.as_tensor(z).reshape(-1).tolist()})
        issues = []
        # a model with an element list (matgl) refuses other elements (InputError)
        if self.elements is not None and self.config.element_types is None:
            known = symbols(self.elements)
            for v in zs:
                if 0 <= v < self.config.max_z and v not in self.elements:
                    issues.append(f"{symbol(v)} is not among this model's trained elements {known}")
        if q is not None and not self.config.charge:
            qs = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
            if bool((qs != 0).any()):
                issues.append(
                    f"total charge {_fmt_charges(qs)} given to a model trained without total "
                    "charges (charge: false): q is ignored and the energy is that of the neutral "
                    "training domain"
                )
        return issues

    def filter_tables(self) -> list:
        """The tabulated filters (``shared.tables.Spline``, one per radial filter, each with its
        measured error in ``.check``), built from the current weights."""
        return filter_tables(self)

    # ------------------------------------------------------------------ compute
    def neighbor_list(self, pos: Tensor, batch: Tensor, box: Tensor | None) -> NeighborList:
        """The network's edges for these (checked, molecule-sorted) inputs."""
        cell = None
        if box is not None:
            from ..neighbors import box_per_molecule

            cell = box_per_molecule(box, int(batch.max()) + 1, pos)
        return SearchEdges(self, batch)(pos, cell)[0]

    def forward(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        box: Tensor | None = None,
        q: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Energies ``[n_molecules, 1]`` and forces ``[n_atoms, 3]`` (an empty tensor when the
        model was loaded with ``derivative=False``), like torchmd-net's ``TorchMD_Net``.

        ``z`` atom types [N] (integers, 0 <= z < max_z), ``pos`` [N, 3] in the model's dtype,
        ``batch`` molecule index per atom (n_molecules = batch.max() + 1), ``box`` [3, 3] or
        [n_molecules, 3, 3] cell rows (defaults to the checkpoint's ``box_vecs``), ``q`` total
        charge per molecule (used only by models trained with ``charge: true``).
        """
        out = self.compute(z, pos, batch, box, q, forces=self.derivative)
        return out["energy"], out["forces"] if self.derivative else pos.new_empty(0)

    def compute(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        box: Tensor | None = None,
        q: Tensor | None = None,
        *,
        forces: bool = True,
        stress: bool = False,
        atom_energies: bool = False,
    ) -> dict[str, Tensor]:
        """Energies and, on request, forces, stress and per-atom energies in one pass.

        Returns a dict with ``energy`` [n_mol, 1] and, as requested, ``forces`` [N, 3] (-dE/dpos),
        ``stress`` [n_mol, 3, 3] ((1/V) dE/d(strain) under a homogeneous deformation of the cell
        and the positions; needs a periodic box) and ``atom_energies`` [N] (summing to the
        energies). Arguments as in ``forward``.
        """
        if torch.is_inference_mode_enabled():
            # forces and stress are autograd results: record them with inference mode off
            # locally (inputs made in inference mode are cloned into normal tensors)
            with autograd_allowed():
                args = (normal_tensor(t) for t in (z, pos, batch, box, q))
                return self.compute(
                    *args, forces=forces, stress=stress, atom_energies=atom_energies
                )
        system = prepare_system(self, z, pos, batch, box, q, stress=stress)
        return evaluate(
            self,
            system,
            SearchEdges(self, system.batch),
            forces=forces,
            stress=stress,
            atom_energies=atom_energies,
        )

    def _default_box(self) -> Tensor | None:
        return default_box(self)


def _fmt_charges(qs: Tensor) -> str:
    vals = sorted({float(v) for v in qs.tolist()})
    return ", ".join(f"{v:g}" for v in vals[:5]) + (" ..." if len(vals) > 5 else "")


def _device(device) -> torch.device:
    try:
        return torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        raise InputError(
            f"device must be a torch.device or a name like 'cpu' or 'cuda:0', got {device!r}"
        ) from None


def _resize_to_checkpoint(model: TensorNetModel, state: Mapping[str, Tensor]) -> None:
    """Prior tables have checkpoint-defined lengths: size those buffers/weights from the file."""
    if model.prior_model is None:
        return
    for name, tensor in list(model.prior_model.named_parameters()) + list(
        model.prior_model.named_buffers()
    ):
        key = "prior_model." + name
        if key in state and state[key].shape != tensor.shape:
            tensor.data = torch.zeros(state[key].shape, dtype=tensor.dtype)


def build_model(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    derivative: bool = True,
    backend: str | Backend = "auto",
    filter_mode: str = "auto",
    device: str | torch.device = "cpu",
) -> TensorNetModel:
    model = TensorNetModel(
        config, derivative=derivative, backend=backend, filter_mode=filter_mode, device=device
    )
    _resize_to_checkpoint(model, state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            "checkpoint does not match a TensorNet with these hyper-parameters: "
            + (
                f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                if missing
                else ""
            )
            + (
                f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
                if unexpected
                else ""
            )
        )
    bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(
            "weight shapes do not match the hyper-parameters: " + "; ".join(bad[:5])
        )

    def finite(key: str, value: Tensor) -> bool:
        if key.endswith((".C_6", ".R_r")):  # D2 tables: row 0 (no element) is NaN by design
            value = value[1:]
        return bool(torch.isfinite(value).all())

    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not finite(k, v)]
    if nonfinite:
        raise CheckpointError(f"checkpoint weights contain NaN/inf: {nonfinite[:5]}")
    model.load_state_dict(dict(state), strict=True)
    # Build the backend's tables at load time, not on the first call ("auto" builds and checks
    # the tabulated filters in float32 here).
    model.backend_impl.prepare(model)
    return model.eval()


def load_model(
    path: str | os.PathLike | Mapping[str, Any],
    device: str | torch.device = "cpu",
    derivative: bool = True,
    backend: str | Backend = "auto",
    layout: str = "auto",
    filter_mode: str = "auto",
    trust_pickle: bool = False,
    matgl_convention: int | str = "auto",
    **overrides: Any,
) -> TensorNetModel:
    """Load a torchmd-net TensorNet checkpoint (``.ckpt``), a plain state dict or a matgl
    TensorNet model folder.

    Args:
        path: checkpoint file, a name from ``NAMED_MODELS`` (``"default"``), an already
            loaded checkpoint/state-dict mapping, a matgl model folder (``model.json``,
            ``model.pt``, ``state.pt``; docs/matgl.md) or ``"matgl:<name>"`` (a pretrained
            model matgl has downloaded into its cache, e.g.
            ``"matgl:TensorNet-MatPES-PBE-v2025.1-PES"``). matgl models take atomic numbers
            as ``z`` and give eV and Angstrom.
        device: where the model lives.
        derivative: also return forces (-dE/dpos), as torchmd-net's ``derivative=True``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` (see
            ``tensornet_fast.available_backends()``) or a ``Backend`` instance;
            ``TENSORNET_FAST_BACKEND`` sets the default. ``auto`` on a CPU device is ``"cpu"``,
            on CUDA ``"triton"`` when Triton is installed.
        filter_mode: radial filters of the ``"cpu"`` and ``"triton"`` backends: ``"exact"``
            (the MLP, once per distinct distance), ``"tabulated"`` (quintic Hermite splines in
            d on 512 intervals, built here at load time, the same tables on every backend;
            forces from the spline's derivative; see tensornet_fast/backends/shared/tables.py)
            or ``"auto"`` (default): tabulated on the cpu backend in float32 when each table's
            error, measured here at 3 points per spline interval, is within the float32
            rounding of the exact filter at those points (else exact, with a warning); exact
            in float64 and on the other backends.
        layout: weight layout of the 3F-output linears: ``"auto"``, ``"blocked"`` (torchmd-net
            >= 3.0) or ``"interleaved"`` (torchmd-net <= 2.6.2). ``auto`` reads files that carry
            the ``check_errors`` hyper-parameter (torchmd-net < 2.6.2) as interleaved and all
            others as blocked: files from torchmd-net 2.6.2 need ``layout="interleaved"``.
        trust_pickle: unpickle the file with ``weights_only=False`` (runs whatever code the
            pickle names: only for files you trust). By default the file is read with
            ``weights_only=True`` and an allow-list of the types torchmd-net / Lightning
            checkpoints hold; anything else is refused with ``CheckpointError`` before it runs.
        matgl_convention: embedding convention of a matgl folder: ``"auto"`` (TensorNet
            ``@model_version`` 1, i.e. matgl <= 2.1 and every pretrained folder: 1; else 2),
            ``1`` or ``2``. ``model.config.embedding_convention`` says which was used.
        **overrides: hyper-parameters replacing the file's (e.g. ``precision=64`` to run in
            float64, ``remove_ref_energy=False`` to add the Atomref energies back; matgl
            folders take ``precision`` only); a bad value raises ``InputError`` naming it.

    The returned model knows the elements it was trained on (``model.elements``: from the
    checkpoint's ``elements`` entry or its Atomref table; None when unknown) and warns once per
    new set of elements outside them (``model.domain_issues``).
    """
    if not isinstance(trust_pickle, bool):
        raise InputError(f"trust_pickle must be True or False, got {trust_pickle!r}")
    if isinstance(path, str) and path in NAMED_MODELS:
        path = NAMED_MODELS[path]
    config, state, source, elements = read_model(
        path, layout, matgl_convention, overrides, trust_pickle=trust_pickle
    )
    device = _device(device)
    model = build_model(
        config,
        state,
        derivative=derivative,
        backend=backend,
        filter_mode=filter_mode,
        device=device,
    )
    model.elements = elements
    model.source = source
    return model.to(device)
