"""The inputs of one call, checked once: ``prepare_system`` turns the user's (z, pos, batch, box,
q) into a :class:`System` (atoms sorted by molecule, one cell per molecule, charge factors) or
raises ``InputError`` naming the argument, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from torch import Tensor

from ..errors import DomainWarning, InputError
from ..neighbors import box_per_molecule
from ..neighbors.graph import check_molecule_count, check_positions
from .elements import element_rows, symbol, symbols


@dataclasses.dataclass
class System:
    """Checked inputs of one call, atoms sorted by molecule (the order every search and
    reduction assumes)."""

    z: Tensor  # [N] int64 atom types (embedding rows: atomic numbers mapped for matgl models)
    pos: Tensor  # [N, 3] positions in the model's dtype (sorted; keeps the caller's graph)
    batch: Tensor  # [N] int64 molecule index, non-decreasing
    n_mol: int
    atoms_per_mol: Tensor  # [n_mol] int64
    cell: Tensor | None  # [n_mol, 3, 3] cell rows a, b, c, or None (open boundaries)
    charge_factor: Tensor  # [N] 1 + 0.1 q of the atom's molecule (ones without charges)
    order: Tensor | None = None  # the sorting permutation; None when already sorted


def _tensor(name: str, value, dtype: torch.dtype | None, device) -> Tensor:
    """A tensor from a tensor, numpy array, list or number (``dtype`` None: keep an integer
    array's integers as int64)."""
    if isinstance(value, Tensor):
        return value
    try:
        out = torch.as_tensor(np.asarray(value) if not np.isscalar(value) else value)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            f"{name} must be a tensor, numpy array or list of numbers, got {type(value).__name__}"
        ) from None
    if out.dtype == torch.bool or not (out.dtype.is_floating_point or _is_int(out.dtype)):
        if dtype is not None or out.dtype == torch.bool:
            raise InputError(f"{name} must hold numbers, got {out.dtype} values")
    if dtype is not None:
        out = out.to(dtype)
    return out.to(device)


def _is_int(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _seen(model, name: str, z: Tensor) -> bool:
    """Whether this very ``z`` tensor, unedited since (version counter), passed the check
    ``name`` on an earlier call: MD loops and calculators pass one z tensor call after call,
    and its range and domain checks were ~20 us of a 22-atom call."""
    last = model.__dict__.get(name)
    return last is not None and last[0] is z and last[1] == z._version


def _mark(model, name: str, z: Tensor) -> None:
    """Remember that ``z`` passed the check ``name`` (a reference keeps its memory from being
    reused by another tensor while remembered)."""
    model.__dict__[name] = (z, z._version)


def check_atoms(model, z, pos, batch, q):
    """(z int64 [N], pos [N, 3], batch int64 [N]) after the shape, dtype, device and value
    checks; numpy arrays and lists become tensors of the model's dtype and device."""
    dev = model.device
    z = _tensor("z", z, None, dev)
    pos_given_as_tensor = isinstance(pos, Tensor)
    pos = _tensor("pos", pos, None if pos_given_as_tensor else model.dtype, dev)
    if batch is not None:
        batch = _tensor("batch", batch, None, dev)
    if z.dim() != 1:
        raise InputError(f"z must be a 1-D tensor of atom types, got shape {tuple(z.shape)}")
    if not _is_int(z.dtype):
        raise InputError(f"z must be an integer tensor of atom types, got {z.dtype}")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise InputError(f"pos must be [n_atoms, 3], got {tuple(pos.shape)}")
    if pos.shape[0] != z.shape[0]:
        raise InputError(f"z has {z.shape[0]} atoms but pos has {pos.shape[0]}")
    if z.shape[0] == 0:
        raise InputError("empty system: no atoms")
    if pos.dtype != model.dtype:
        raise InputError(
            f"pos is {pos.dtype} but the model is {model.dtype}: convert one of them "
            f"(pos.to({model.dtype}) or model.to({pos.dtype}))"
        )
    for name, t in (("z", z), ("pos", pos), ("batch", batch), ("q", q)):
        if isinstance(t, Tensor) and t.device != model.device:
            raise InputError(f"{name} is on {t.device} but the model is on {model.device}")
    check_positions(pos)
    z = z.long()
    if model.config.element_types is not None:  # z are atomic numbers: map them to rows
        z = element_rows(model.config.element_types, z)
    max_z = model.config.max_z
    out_of_range = None if _seen(model, "_z_in_range", z) else (z < 0) | (z >= max_z)
    if out_of_range is not None and bool(out_of_range.any()):
        bad = torch.unique(z[out_of_range])[:10].tolist()
        known = model.elements if model.elements is not None else range(1, max_z)
        raise InputError(
            "; ".join(
                f"{symbol(v)} is not among this model's elements {symbols(known)}"
                if v >= 0
                else f"z={v} is not an atomic number"
                for v in bad
            )
        )
    if out_of_range is not None:
        _mark(model, "_z_in_range", z)
    if batch is None:
        batch = torch.zeros_like(z)
    elif batch.shape != z.shape or not _is_int(batch.dtype):
        raise InputError(
            f"batch must be an integer tensor of shape {tuple(z.shape)}, got "
            f"{batch.dtype} of shape {tuple(batch.shape)}"
        )
    elif bool((batch < 0).any()):
        raise InputError("batch indices must be >= 0")
    return z, pos, batch.long()


def check_domain(model, z: Tensor, q) -> None:
    """Warn (``DomainWarning``) once per model and new set of problems when the input lies
    outside what the model was trained on (``TensorNetModel.domain_issues``)."""
    outside = None
    # z are embedding rows here; a model with an element list (matgl) took atomic numbers and
    # refused other elements in check_atoms
    if q is None and _seen(model, "_z_in_domain", z):
        return
    if model.elements is not None and model.config.element_types is None:
        mask = model.__dict__.get("_trained_mask")
        if mask is None or mask.device != z.device:
            mask = torch.zeros(model.config.max_z, dtype=torch.bool, device=z.device)
            mask[list(model.elements)] = True
            model.__dict__["_trained_mask"] = mask
        if not bool(mask.index_select(0, z).all()):
            outside = z
    charged = q is not None and not model.config.charge
    if outside is None and not charged:
        if q is None:
            _mark(model, "_z_in_domain", z)
        return
    issues = model.domain_issues(torch.unique(outside) if outside is not None else [], q)
    elements = tuple(i for i in issues if not i.startswith("total charge"))
    key = (elements, len(elements) != len(issues))  # (element issues, charged)
    warned = model.__dict__.setdefault("_domain_warned", set())
    if issues and key not in warned:
        warned.add(key)
        warnings.warn(
            "input outside the model's training domain (the numbers are extrapolation): "
            + "; ".join(issues),
            DomainWarning,
            stacklevel=4,
        )


def check_charges(q, n_mol: int, device) -> Tensor | None:
    """Total charges as a float64 tensor of 1 or n_mol finite values, or None."""
    if q is None:
        return None
    q = _tensor("q", q, torch.float64, device)
    if q.dim() > 1 or q.numel() not in (1, n_mol):
        raise InputError(
            f"q must hold one total charge per molecule ({n_mol}) or one for all, got "
            f"shape {tuple(q.shape)}"
        )
    if not bool(torch.isfinite(q).all()):
        raise InputError(f"q (total charge) must be finite, got {q.reshape(-1)[:5].tolist()}")
    return q


def charge_factor(model, q, batch: Tensor, n_mol: int) -> Tensor:
    """1 + 0.1 q per atom; q is the molecules' total charge, used iff the model has charge."""
    q = check_charges(q, n_mol, batch.device)
    if q is not None and not model.config.charge:
        q = None  # ignored, as torchmd-net's trainer ignores it; check_domain warned
    if q is None:
        return torch.ones(batch.shape[0], dtype=model.dtype, device=batch.device)
    q = q.to(model.dtype).reshape(-1)
    if q.numel() == 1 and n_mol > 1:
        q = q.expand(n_mol)
    return 1.0 + 0.1 * q[batch]


def default_box(model) -> Tensor | None:
    """The checkpoint's ``box_vecs`` in the model's dtype, or None."""
    if model.config.box_vecs is None:
        return None
    return model.representation_model.distance.box.to(model.dtype)


def prepare_system(
    model,
    z,
    pos,
    batch=None,
    box=None,
    q=None,
    *,
    stress: bool = False,
    sort: bool = True,
) -> System:
    """Check one call's inputs and sort its atoms by molecule (``sort=False``: refuse an
    unsorted batch instead, for callers whose buffers are fixed)."""
    one_molecule = batch is None  # then sorted, one molecule: 4 ops and 2 host reads fewer
    z, pos, batch = check_atoms(model, z, pos, batch, q)
    n_mol = 1 if one_molecule else int(batch.max()) + 1
    check_molecule_count(n_mol, z.shape[0])
    q = check_charges(q, n_mol, z.device)
    check_domain(model, z, q)
    if box is None:
        box = default_box(model)
    if stress and box is None:
        raise InputError("stress needs a periodic box (box=... or the checkpoint's box_vecs)")
    order = None
    if not one_molecule and bool((batch[1:] < batch[:-1]).any()):
        if not sort:
            raise InputError("batch must be sorted (atoms of a molecule contiguous, ascending)")
        order = torch.sort(batch, stable=True).indices
        z, pos, batch = z[order], pos[order], batch[order]
    cell = box_per_molecule(box, n_mol, pos).contiguous() if box is not None else None
    return System(
        z=z,
        pos=pos,
        batch=batch,
        n_mol=n_mol,
        atoms_per_mol=(
            torch.full((1,), z.shape[0], device=z.device)
            if one_molecule
            else torch.bincount(batch, minlength=n_mol)
        ),
        cell=cell,
        charge_factor=charge_factor(model, q, batch, n_mol),
        order=order,
    )
