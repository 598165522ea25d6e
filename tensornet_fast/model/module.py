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

from ..backends import resolve_backend, warn_once
from ..backends.cpu import backend as cpu_backend
from ..backends.reference import math as reference
from ..backends.triton import backend as triton_backend
from ..errors import CheckpointError, InputError
from ..neighbors import NeighborList, box_per_molecule, radius_graph_full, reject_coincident
from .config import ModelConfig
from .formats.torchmdnet import load_checkpoint
from .params import PRIOR_PARAMS, OutputParams, RepresentationParams
from .priors import atomref_energy, d2_pair_energies, zbl_pair_energies

_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
NAMED_MODELS = {"default": os.path.join(_DATA_DIR, "default.ckpt")}


class TensorNetModel(nn.Module):
    """TensorNet energies and forces; parameters named as in torchmd-net's ``TorchMD_Net``."""

    def __init__(
        self,
        config: ModelConfig,
        derivative: bool = True,
        backend: str = "auto",
        filter_mode: str = "auto",
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        self.filter_mode = filter_mode  # validated by the setter; kept as filter_request
        self.config = config
        self.derivative = derivative
        self.backend = resolve_backend(backend, device=str(device))
        # "auto" may still change its mind per call (a model moved to another device).
        self._backend_explicit = self.backend != "reference" and backend not in (None, "", "auto")
        if filter_mode == "tabulated" and self.backend not in ("cpu", "triton"):
            raise ValueError(f"filter_mode={filter_mode!r} needs backend='cpu' or 'triton'")
        self._splines: tuple | None = None
        self._cpu_prepared: tuple | None = None  # cpu_backend.prepared(self)
        self.representation_model = RepresentationParams(config)
        self.output_model = OutputParams(config)
        priors = [PRIOR_PARAMS[spec.name](spec, config) for spec in config.priors]
        self.prior_model = nn.ModuleList(priors) if priors else None
        self.register_buffer("mean", torch.zeros((), dtype=config.dtype))
        self.register_buffer("std", torch.ones((), dtype=config.dtype))

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        return self.representation_model.linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.representation_model.linear.weight.device

    @property
    def cutoff(self) -> float:
        return self.config.cutoff_upper

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
        is within the float32 rounding of the exact filter (``cpu_backend.TableCheck``; one
        warning and "exact" otherwise), and "exact" in float64 and on the other backends.
        Resolved per call, so ``model.to(torch.float64)`` turns an auto model exact."""
        if self.filter_request != "auto":
            return self.filter_request
        if self.backend != "cpu" or self.dtype != torch.float32:
            return "exact"
        failed = [s.check for s in self.cpu_splines() if not s.check.within_fp32_rounding]
        if not failed:
            return "tabulated"
        c = failed[0]
        warn_once(
            "auto-filter-exact",
            "filter_mode 'auto' uses the exact filters: a tabulated filter of this model is off "
            f"by {c.value_error:.1e} (values) / {c.derivative_error:.1e} (derivatives), above "
            f"the float32 rounding of the exact filter ({c.fp32_value_error:.1e} / "
            f"{c.fp32_derivative_error:.1e}; relative to the largest value / derivative)",
        )
        return "exact"

    @filter_mode.setter
    def filter_mode(self, mode: str) -> None:
        if mode not in ("auto",) + cpu_backend.FILTER_MODES:
            raise ValueError(
                f"filter_mode must be 'auto' or one of {cpu_backend.FILTER_MODES}, got {mode!r}"
            )
        self.filter_request = mode

    def cpu_splines(self) -> list:
        """Tabulated filters of the cpu backend (``filter_mode`` "tabulated"), built once from
        the weights and rebuilt only if the dtype or device changes (weights are frozen for
        inference). Each spline's ``check`` holds its measured error."""
        key = (self.dtype, self.device)
        if self._splines is None or self._splines[0] != key:
            self._splines = (key, cpu_backend.build_splines(self))
        return self._splines[1]

    # ------------------------------------------------------------------ inputs
    def _check_inputs(
        self, z: Tensor, pos: Tensor, batch: Tensor | None, q: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(z, Tensor) or z.dim() != 1:
            raise InputError(f"z must be a 1-D tensor of atom types, got {getattr(z, 'shape', z)}")
        if z.dtype.is_floating_point or z.dtype.is_complex or z.dtype == torch.bool:
            raise InputError(f"z must be an integer tensor, got {z.dtype}")
        if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
            raise InputError(f"pos must be [n_atoms, 3], got {getattr(pos, 'shape', pos)}")
        if pos.shape[0] != z.shape[0]:
            raise InputError(f"z has {z.shape[0]} atoms but pos has {pos.shape[0]}")
        if z.shape[0] == 0:
            raise InputError("empty system: no atoms")
        if pos.dtype != self.dtype:
            raise InputError(
                f"pos is {pos.dtype} but the model is {self.dtype}: convert one of them "
                f"(pos.to({self.dtype}) or model.to({pos.dtype}))"
            )
        for name, t in (("z", z), ("pos", pos), ("batch", batch), ("q", q)):
            if t is not None and t.device != self.device:
                raise InputError(f"{name} is on {t.device} but the model is on {self.device}")
        if not bool(torch.isfinite(pos).all()):
            bad = torch.nonzero(~torch.isfinite(pos).all(1)).flatten()[:5].tolist()
            raise InputError(f"positions contain NaN or inf (atoms {bad})")
        z = z.long()
        max_z = self.config.max_z
        out_of_range = (z < 0) | (z >= max_z)
        if bool(out_of_range.any()):
            bad = torch.unique(z[out_of_range])[:10].tolist()
            raise InputError(f"atom types {bad} are outside this model's range 0..{max_z - 1}")
        if batch is None:
            batch = torch.zeros_like(z)
        elif batch.shape != z.shape or batch.dtype.is_floating_point:
            raise InputError(f"batch must be an integer tensor of shape {tuple(z.shape)}")
        elif bool((batch < 0).any()):
            raise InputError("batch indices must be >= 0")
        return z, batch.long()

    def _prepare_call(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None,
        box: Tensor | None,
        q: Tensor | None,
        stress: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int, Tensor | None, Tensor]:
        """Checked inputs of one call, atoms sorted by molecule: (z, pos, batch, box, n_mol,
        order, charge_factor); ``order`` is the sorting permutation (None when already sorted),
        ``box`` the checkpoint's default when None is given."""
        z, batch = self._check_inputs(z, pos, batch, q)
        n_mol = int(batch.max()) + 1
        if box is None:
            box = self._default_box()
        if stress and box is None:
            raise InputError("stress needs a periodic box (box=... or the checkpoint's box_vecs)")
        order = None
        if bool((batch[1:] < batch[:-1]).any()):
            order = torch.sort(batch, stable=True).indices
            z, pos, batch = z[order], pos[order], batch[order]
        charge_factor = self._charge_factor(q, batch, n_mol)
        return z, pos, batch, box, n_mol, order, charge_factor

    def _charge_factor(self, q: Tensor | None, batch: Tensor, n_mol: int) -> Tensor:
        """1 + 0.1 q per atom; q is the molecules' total charge, used iff the model has charge."""
        if q is not None and not self.config.charge:
            if bool((q != 0).any()):
                warn_once(
                    "q-ignored",
                    "this checkpoint was trained without total charges (charge: false); "
                    "q is ignored, as torchmd-net's trainer ignores it for such models",
                )
            q = None
        if q is None:
            return torch.ones(batch.shape[0], dtype=self.dtype, device=batch.device)
        q = torch.as_tensor(q, device=batch.device).to(self.dtype).reshape(-1)
        if q.numel() == 1 and n_mol > 1:
            q = q.expand(n_mol)
        if q.shape[0] != n_mol:
            raise InputError(
                f"q must hold one total charge per molecule ({n_mol}), got {q.shape[0]}"
            )
        return 1.0 + 0.1 * q[batch]

    def _default_box(self) -> Tensor | None:
        if self.config.box_vecs is None:
            return None
        return self.representation_model.distance.box.to(self.dtype)

    # ------------------------------------------------------------------ compute
    def neighbor_list(self, pos: Tensor, batch: Tensor, box: Tensor | None) -> NeighborList:
        c = self.config
        nl = radius_graph_full(
            pos, c.cutoff_upper, batch, box, loop=True, cutoff_lower=c.cutoff_lower
        )
        reject_coincident(nl)
        return nl

    def model_output(
        self, z: Tensor, pos: Tensor, batch: Tensor, box: Tensor | None, charge_factor: Tensor
    ) -> Tensor:
        """The network's per-atom output epsilon_i [N, 1] (before std, priors, reduction)."""
        nl = self.neighbor_list(pos, batch, box)
        # The one backend switch. The cpu and triton backends' edge passes are inference-only
        # (forces, no parameter gradients, no double backward), so training mode runs the
        # reference math.
        if self.backend == "triton" and not self.training:
            if triton_backend.supports_device(pos.device):
                return triton_backend.atomic_energies(self, z, nl, charge_factor)
            if self._backend_explicit:
                raise InputError(
                    f"backend='triton' runs on CUDA tensors (or CPU tensors with "
                    f"TRITON_INTERPRET=1), got {pos.device}"
                )
        if self.backend == "cpu" and not self.training:
            if pos.device.type == "cpu":
                return cpu_backend.atomic_energies(self, z, nl, charge_factor)
            if self._backend_explicit:
                raise InputError(
                    f"backend='cpu' runs on CPU tensors, got {pos.device}: load the model with "
                    "backend='auto' or 'reference' for this device"
                )
        return reference.atomic_energies(
            self.representation_model,
            self.output_model.output_network.layers,
            self.config,
            z,
            nl.edge_index,
            nl.edge_vec,
            nl.edge_dist,
            charge_factor,
        )

    def _priors(self, name: str) -> list:
        return [
            p for spec, p in zip(self.config.priors, self.prior_model or []) if spec.name == name
        ]

    def _pair_priors(self, z, pos, batch, box) -> list[tuple[Tensor, Tensor]]:
        """(halved pair energies, receivers) of ZBL and D2, in checkpoint order."""
        pairs = []
        for spec, prior in zip(self.config.priors, self.prior_model or []):
            if spec.name == "ZBL":
                pairs.append(zbl_pair_energies(prior, z, pos, batch, box))
            elif spec.name == "D2":
                pairs.append(d2_pair_energies(prior, z, pos, batch))
        return pairs

    def _scaled_outputs(self, eps: Tensor, z: Tensor) -> Tensor:
        """epsilon_i * std (+ atomref), per atom [N, 1]."""
        eps = eps * self.std
        for prior in self._priors("Atomref"):
            eps = eps + atomref_energy(prior, z)
        return eps

    def reduce_energy(
        self,
        eps: Tensor,
        z: Tensor,
        pos: Tensor,
        batch: Tensor,
        box: Tensor | None,
        n_mol: int,
        pairs: list[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """epsilon_i * std (+ atomref) -> per molecule (+ mean) (+ ZBL, D2): [n_mol, 1], summed
        in torchmd-net's order (in float32 another order moves the result by ~1e-6).
        ``pairs``: ``_pair_priors(...)`` when the caller already has them."""
        eps = self._scaled_outputs(eps, z)
        y = torch.zeros(n_mol, 1, dtype=eps.dtype, device=eps.device).index_add(0, batch, eps)
        if self.config.reduce_op == "mean":
            # torchmd-net reduces with scatter_reduce(..., "mean") on a zero tensor, whose
            # include_self=True counts the zero: the divisor is n_atoms + 1. Trained models
            # learned that divisor, so it is reproduced here.
            count = torch.bincount(batch, minlength=n_mol).to(eps.dtype)
            y = y / (count + 1)[:, None]
        y = y + self.mean
        if pairs is None:
            pairs = self._pair_priors(z, pos, batch, box)
        for pair, receiver in pairs:
            y = y + torch.zeros_like(y[:, 0]).index_add(0, batch[receiver], pair)[:, None]
        return y

    def atom_contributions(
        self,
        eps: Tensor,
        z: Tensor,
        batch: Tensor,
        n_mol: int,
        pairs: list[tuple[Tensor, Tensor]],
    ) -> Tensor:
        """Per-atom energies [N] summing (to rounding) to ``reduce_energy``: epsilon_i * std
        (+ atomref) reduced as torchmd-net does, an equal share of the mean, and half of each
        ZBL/D2 pair (``pairs`` from ``_pair_priors``) the atom is in."""
        e = self._scaled_outputs(eps, z)[:, 0]
        count = torch.bincount(batch, minlength=n_mol).to(e.dtype)
        if self.config.reduce_op == "mean":
            e = e / (count + 1)[batch]
        e = e + (self.mean / count.clamp_min(1))[batch]
        for pair, receiver in pairs:
            e = e.index_add(0, receiver, pair)
        return e

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
        z, pos_in, batch, box, n_mol, order, charge_factor = self._prepare_call(
            z, pos, batch, box, q, stress
        )
        needs_grad = forces or stress
        # Keep the autograd graph to the caller's positions when they ask for it (pos requires
        # grad, e.g. training on forces or a Hessian); otherwise return plain tensors.
        keep_graph = self.training or (pos.requires_grad and torch.is_grad_enabled())
        with torch.set_grad_enabled(needs_grad or keep_graph):
            leaf = (
                pos_in
                if keep_graph and pos_in.requires_grad
                else pos_in.detach().requires_grad_(forces)
            )
            positions, cell = leaf, box
            if stress:
                cells = box_per_molecule(box, n_mol, pos_in)  # [n_mol, 3, 3]
                strain = torch.zeros_like(cells).requires_grad_(True)
                deform = torch.eye(3, dtype=cells.dtype, device=cells.device) + strain
                positions = torch.einsum("na,nab->nb", leaf, deform[batch])
                cell = cells @ deform
            eps = self.model_output(z, positions, batch, cell, charge_factor)
            pairs = self._pair_priors(z, positions, batch, cell)
            energy = self.reduce_energy(eps, z, positions, batch, cell, n_mol, pairs)
            out = {"energy": energy}
            if atom_energies:
                out["atom_energies"] = self.atom_contributions(eps, z, batch, n_mol, pairs)
            inputs = ([leaf] if forces else []) + ([strain] if stress else [])
            grads = (
                torch.autograd.grad(energy.sum(), inputs, create_graph=keep_graph) if inputs else []
            )
        if forces:
            out["forces"] = -grads[0]
        if stress:
            volume = torch.linalg.det(cells.detach()).abs()
            virial = grads[-1]
            out["stress"] = 0.5 * (virial + virial.transpose(1, 2)) / volume[:, None, None]
        if order is not None:
            for key in ("forces", "atom_energies"):
                if key in out:
                    out[key] = torch.empty_like(out[key]).index_copy(0, order, out[key])
        if not keep_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out


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
    backend: str = "auto",
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
    # Build the tables at load time, not on the first call ("auto" builds and checks the cpu
    # backend's tables in float32 here).
    if model.filter_mode == "tabulated":
        if model.backend == "triton":
            triton_backend.splines(model)
        else:
            model.cpu_splines()
    return model.eval()


def load_model(
    path: str | os.PathLike | Mapping[str, Any],
    device: str | torch.device = "cpu",
    derivative: bool = True,
    backend: str = "auto",
    layout: str = "auto",
    filter_mode: str = "auto",
    **overrides: Any,
) -> TensorNetModel:
    """Load a torchmd-net TensorNet checkpoint (``.ckpt``) or a plain state dict.

    Args:
        path: checkpoint file, a name from ``NAMED_MODELS`` (``"default"``), or an already
            loaded checkpoint/state-dict mapping.
        device: where the model lives.
        derivative: also return forces (-dE/dpos), as torchmd-net's ``derivative=True``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` (see
            ``tensornet_fast.available_backends()``); ``TENSORNET_FAST_BACKEND`` sets the default.
            ``auto`` on a CPU device is ``"cpu"``, on CUDA ``"triton"`` when Triton is installed.
        filter_mode: radial filters of the ``"cpu"`` and ``"triton"`` backends: ``"exact"``
            (the MLP, once per distinct distance), ``"tabulated"`` (Hermite splines in d
            built here at load time: quintic on the cpu backend, cubic on triton; forces from
            the spline's derivative; error vs float64 at float32 rounding level, see
            tensornet_fast/cpu_backend.py) or ``"auto"`` (default): tabulated on the cpu
            backend in float32 when each table's error, measured here at 3 points per spline
            interval, is within the float32 rounding of the exact filter at those points
            (else exact, with a warning); exact in float64 and on the other backends.
        layout: weight layout of the 3F-output linears: ``"auto"``, ``"blocked"`` (torchmd-net
            >= 3.0) or ``"interleaved"`` (torchmd-net <= 2.6.2). ``auto`` reads files that carry
            the ``check_errors`` hyper-parameter (torchmd-net < 2.6.2) as interleaved and all
            others as blocked: files from torchmd-net 2.6.2 need ``layout="interleaved"``.
        **overrides: hyper-parameters replacing the file's (e.g. ``precision=64`` to run in
            float64, ``remove_ref_energy=False`` to add the Atomref energies back).
    """
    if isinstance(path, str) and path in NAMED_MODELS:
        path = NAMED_MODELS[path]
    config, state, _ = load_checkpoint(path, layout=layout, overrides=overrides)
    model = build_model(
        config,
        state,
        derivative=derivative,
        backend=backend,
        filter_mode=filter_mode,
        device=device,
    )
    return model.to(device)
