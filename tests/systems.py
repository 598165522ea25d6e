"""Small test systems: batched g2 molecules, water clusters and periodic water boxes."""

from __future__ import annotations

import numpy as np
import torch
from ase.build import molecule

_WATER = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def molecule_batch(
    names=("CH3OH", "C6H6", "H2O", "CH3Cl"), jitter=0.05, seed=0, dtype=torch.float64
):
    """(z, pos, batch) of g2 molecules, slightly displaced off equilibrium."""
    rng = np.random.default_rng(seed)
    zs, ps, bs = [], [], []
    for k, name in enumerate(names):
        atoms = molecule(name)
        zs.append(atoms.numbers)
        ps.append(atoms.positions + jitter * rng.normal(size=atoms.positions.shape))
        bs.append(np.full(len(atoms), k))
    return (
        torch.as_tensor(np.concatenate(zs), dtype=torch.long),
        torch.as_tensor(np.concatenate(ps), dtype=dtype),
        torch.as_tensor(np.concatenate(bs), dtype=torch.long),
    )


def water_box(n_per_side: int, spacing: float = 3.1, seed: int = 0, dtype=torch.float64):
    """(z, pos, box): n^3 randomly oriented waters on a jittered grid (3.1 A ~ liquid density)."""
    rng = np.random.default_rng(seed)
    pos, z = [], []
    for ix in range(n_per_side):
        for iy in range(n_per_side):
            for iz in range(n_per_side):
                centre = (np.array([ix, iy, iz]) + 0.5) * spacing + rng.normal(scale=0.15, size=3)
                pos.append(_WATER @ _random_rotation(rng).T + centre)
                z += [8, 1, 1]
    length = n_per_side * spacing
    box = torch.eye(3, dtype=dtype) * length
    return torch.tensor(z), torch.as_tensor(np.concatenate(pos), dtype=dtype), box
