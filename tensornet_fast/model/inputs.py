"""The inputs of one call, checked once: ``prepare_system`` turns the user's (z, pos, batch, box,
q) into a :class:`System` (atoms sorted by molecule, one cell per molecule, charge factors) or
raises ``InputError`` naming the argument, the value and what is allowed."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..backends import warn_once
from ..errors import InputError
from ..neighbors import box_per_molecule
from .elements import element_rows


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


def check_atoms(model, z: Tensor, pos: Tensor, batch: Tensor | None, q: Tensor | None):
    """(z int64 [N], batch int64 [N]) after the shape, dtype, device and value checks."""
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
    if pos.dtype != model.dtype:
        raise InputError(
            f"pos is {pos.dtype} but the model is {model.dtype}: convert one of them "
            f"(pos.to({model.dtype}) or model.to({pos.dtype}))"
        )
    for name, t in (("z", z), ("pos", pos), ("batch", batch), ("q", q)):
        if isinstance(t, Tensor) and t.device != model.device:
            raise InputError(f"{name} is on {t.device} but the model is on {model.device}")
    if not bool(torch.isfinite(pos).all()):
        bad = torch.nonzero(~torch.isfinite(pos).all(1)).flatten()[:5].tolist()
        raise InputError(f"positions contain NaN or inf (atoms {bad})")
    z = z.long()
    if model.config.element_types is not None:  # z are atomic numbers: map them to rows
        z = element_rows(model.config.element_types, z)
    max_z = model.config.max_z
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


def charge_factor(model, q: Tensor | None, batch: Tensor, n_mol: int) -> Tensor:
    """1 + 0.1 q per atom; q is the molecules' total charge, used iff the model has charge."""
    if q is not None and not model.config.charge:
        if bool((torch.as_tensor(q) != 0).any()):
            warn_once(
                "q-ignored",
                "this checkpoint was trained without total charges (charge: false); "
                "q is ignored, as torchmd-net's trainer ignores it for such models",
            )
        q = None
    if q is None:
        return torch.ones(batch.shape[0], dtype=model.dtype, device=batch.device)
    q = torch.as_tensor(q, device=batch.device).to(model.dtype).reshape(-1)
    if q.numel() == 1 and n_mol > 1:
        q = q.expand(n_mol)
    if q.shape[0] != n_mol:
        raise InputError(f"q must hold one total charge per molecule ({n_mol}), got {q.shape[0]}")
    return 1.0 + 0.1 * q[batch]


def default_box(model) -> Tensor | None:
    """The checkpoint's ``box_vecs`` in the model's dtype, or None."""
    if model.config.box_vecs is None:
        return None
    return model.representation_model.distance.box.to(model.dtype)


def prepare_system(
    model,
    z: Tensor,
    pos: Tensor,
    batch: Tensor | None = None,
    box: Tensor | None = None,
    q: Tensor | None = None,
    *,
    stress: bool = False,
    sort: bool = True,
) -> System:
    """Check one call's inputs and sort its atoms by molecule (``sort=False``: refuse an
    unsorted batch instead, for callers whose buffers are fixed)."""
    z, batch = check_atoms(model, z, pos, batch, q)
    n_mol = int(batch.max()) + 1
    if box is None:
        box = default_box(model)
    if stress and box is None:
        raise InputError("stress needs a periodic box (box=... or the checkpoint's box_vecs)")
    order = None
    if bool((batch[1:] < batch[:-1]).any()):
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
        atoms_per_mol=torch.bincount(batch, minlength=n_mol),
        cell=cell,
        charge_factor=charge_factor(model, q, batch, n_mol),
        order=order,
    )
