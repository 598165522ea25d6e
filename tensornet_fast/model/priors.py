"""torchmd-net's priors: Atomref (per atom, before the reduction), ZBL and D2 (per molecule).

Their tables (atomic numbers, C6, R_r, atomref) come from the checkpoint's buffers, so the
numbers are those the model was trained with. The pair priors take their pairs (within their own
cutoff, as torchmd-net's own neighbour lists give them) from the model's edge list
(``model.assembly``); D2 ignores periodic images (torchmd-net 3.1 does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backends.shared.radial import cosine_cutoff
from .params import AtomrefParams, D2Params, ZBLParams

BOHR_RADIUS_M = 5.29177210903e-11
AVOGADRO = 6.02214076e23
# e^2 / (4 pi eps0) in J m: the ZBL energy prefactor as torchmd-net writes it.
_ZBL_COULOMB_J_M = 2.30707755e-28


def atomref_energy(prior: AtomrefParams, z: Tensor) -> Tensor:
    """Per-atom reference energy [N, 1] (zero when the prior is disabled)."""
    if not prior.enable:
        return torch.zeros(z.shape[0], 1, dtype=prior.atomref.weight.dtype, device=z.device)
    return prior.atomref.weight[z]


def zbl_from_edges(prior: ZBLParams, z: Tensor, edge_index: Tensor, dist: Tensor) -> Tensor:
    """Halved ZBL energy of each directed pair [E] given its distance (0 beyond the cutoff)."""
    zi, zj = (prior.atomic_number[z[idx]].to(dist.dtype) for idx in edge_index)
    screening = 0.8854 * BOHR_RADIUS_M / (zi**0.23 + zj**0.23)
    x = dist * prior.distance_scale / screening
    phi = (
        0.1818 * torch.exp(-3.2 * x)
        + 0.5099 * torch.exp(-0.9423 * x)
        + 0.2802 * torch.exp(-0.4029 * x)
        + 0.02817 * torch.exp(-0.2016 * x)
    )
    phi = phi * cosine_cutoff(dist, 0.0, prior.cutoff_distance)
    pair = phi * zi * zj / dist
    scale = 0.5 * _ZBL_COULOMB_J_M / prior.energy_scale / prior.distance_scale
    return scale * pair


def d2_from_edges(prior: D2Params, z: Tensor, edge_index: Tensor, dist: Tensor) -> Tensor:
    """Halved D2 energy of each directed pair [E] given its distance (no cutoff applied here:
    the caller selects the pairs within ``prior.cutoff_distance``)."""
    r = dist * (prior.distance_scale * 1e9)  # nm
    elem = prior.Z_map[z[edge_index]]  # [2, E]
    c6 = (prior.C_6[elem[0]] * prior.C_6[elem[1]]).sqrt()
    r_r = prior.R_r[elem[0]] + prior.R_r[elem[1]]
    damping = 1.0 / (1.0 + torch.exp(-20.0 * (r / r_r - 1.0)))
    pair = c6 / r**6 * damping  # J/mol
    return -0.5 * pair / (prior.energy_scale * AVOGADRO)
