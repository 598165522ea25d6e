"""Batches of records as model inputs, and per-molecule reductions of model outputs (shared by
single points and relaxations)."""

from __future__ import annotations

import numpy as np
import torch

from .readers import Record


def concat_records(
    model: torch.nn.Module, recs: list[Record], length_unit: float = 1.0
) -> tuple[torch.Tensor | None, ...]:
    """(z, pos, batch, q, box) of a batch of records on the model's device, positions and cells
    in the model's length unit (``length_unit`` = Angstrom per model unit). q: total charge per
    molecule, only for models trained with it; box [n_mol, 3, 3] when the records are periodic
    (a batch never mixes periodic and isolated records), else None."""
    device = model.device
    z = torch.from_numpy(np.concatenate([r.z for r in recs]))
    pos = torch.from_numpy(np.concatenate([r.pos for r in recs]) / length_unit).to(model.dtype)
    counts = torch.tensor([r.n_atoms for r in recs])
    batch = torch.repeat_interleave(torch.arange(len(recs)), counts)
    if device.type == "cuda":
        z, pos, batch = z.pin_memory(), pos.pin_memory(), batch.pin_memory()
    q = None
    if model.config.charge:  # total charge per molecule, only for models trained with it
        q = torch.tensor([float(r.charge) for r in recs], dtype=model.dtype, device=device)
    box = None
    if recs[0].periodic:
        cells = np.stack([r.cell for r in recs]) / length_unit
        box = torch.from_numpy(cells).to(device=device, dtype=model.dtype)
    return (
        z.to(device, non_blocking=True),
        pos.to(device, non_blocking=True),
        batch.to(device, non_blocking=True),
        q,
        box,
    )


def per_molecule_fmax(forces: torch.Tensor, batch: torch.Tensor, n_mol: int) -> torch.Tensor:
    """The largest atomic force of each molecule [n_mol]."""
    norms = forces.detach().norm(dim=1)
    return norms.new_zeros(n_mol).scatter_reduce(0, batch, norms, "amax", include_self=False)
