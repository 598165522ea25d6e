"""Batched FIRE geometry optimisation in torch: every molecule of a batch has its own FIRE state
(velocity, time step, mixing), follows ASE's ``FIRE`` update rule with ASE's defaults, and stops
on its own (max atomic force < ``fmax``, or ``max_steps`` updates). Converged molecules leave the
batch, so the remaining ones run on a smaller graph."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import DomainWarning
from .readers import Record
from .tensors import concat_records, per_molecule_fmax


def fire_relax(
    model: torch.nn.Module,
    recs: list[Record],
    fmax: float = 0.05,
    max_steps: int = 200,
    dt: float = 0.1,
    maxstep: float = 0.2,
    dtmax: float = 1.0,
    nmin: int = 5,
    finc: float = 1.1,
    fdec: float = 0.5,
    astart: float = 0.1,
    fa: float = 0.99,
    energy_unit: float = 1.0,
    length_unit: float = 1.0,
) -> list[tuple[float, float, int, bool, np.ndarray]]:
    """Relax each record's geometry; returns (energy, fmax, steps, converged, positions) per
    record, where energy, fmax and positions [n, 3] are those of the final geometry and steps
    counts FIRE position updates. FIRE runs in eV and Angstrom (ASE's units, so ``fmax``,
    ``dt`` and ``maxstep`` mean what they mean in ASE); the model sees its own units
    (``energy_unit`` eV and ``length_unit`` Angstrom per model unit)."""
    n = len(recs)
    z, _, batch, q, box = concat_records(model, recs)
    if box is not None:
        raise ValueError("relaxation of periodic cells is not supported (molecules only)")
    device, dtype = z.device, model.dtype
    # state in float64 Angstrom, straight from the records (not through the model's dtype)
    pos = torch.from_numpy(np.concatenate([r.pos for r in recs])).to(device)
    force_unit = energy_unit / length_unit
    v = torch.zeros_like(pos)
    dt_m = torch.full((n,), dt, dtype=torch.float64, device=device)
    a_m = torch.full((n,), astart, dtype=torch.float64, device=device)
    n_pos = torch.zeros(n, dtype=torch.long, device=device)
    energy = torch.zeros(n, dtype=torch.float64, device=device)
    fmax_out = torch.zeros(n, dtype=torch.float64, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    converged = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)

    for step in range(max_steps + 1):
        mol = torch.nonzero(active).flatten()  # global ids of active molecules
        m = mol.shape[0]
        amask = active[batch]
        local = (torch.cumsum(active.long(), 0) - 1)[batch[amask]]  # local molecule per atom
        with warnings.catch_warnings():  # the records' status column says it (domain.py)
            warnings.simplefilter("ignore", DomainWarning)
            e, f = model(
                z[amask],
                (pos[amask] / length_unit).to(dtype),
                local,
                q=None if q is None else q[mol],
            )
        f = f.double() * force_unit
        fm = per_molecule_fmax(f, local, m).double()
        energy[mol] = e.detach().reshape(-1).double() * energy_unit
        fmax_out[mol] = fm
        steps[mol] = step
        conv = fm < fmax
        converged[mol[conv]] = True
        stop = conv | (step == max_steps)
        active[mol[stop]] = False
        if not bool(active.any()):
            break
        keep = ~stop[local]  # atoms whose molecule takes another step
        va = v[amask]
        if step > 0:
            zeros = torch.zeros(m, dtype=torch.float64, device=device)
            vf = zeros.index_add(0, local, (va * f).sum(1))
            fn = torch.zeros_like(vf).index_add(0, local, (f * f).sum(1)).sqrt()
            vn = torch.zeros_like(vf).index_add(0, local, (va * va).sum(1)).sqrt()
            up = vf > 0
            a_l, dt_l, np_l = a_m[mol], dt_m[mol], n_pos[mol]
            mixed = (1 - a_l[local, None]) * va + a_l[local, None] * f / fn.clamp_min(1e-300)[
                local, None
            ] * vn[local, None]
            va = torch.where(up[local, None], mixed, torch.zeros_like(va))
            grow = up & (np_l > nmin)
            dt_l = torch.where(grow, torch.clamp(dt_l * finc, max=dtmax), dt_l)
            a_l = torch.where(grow, a_l * fa, a_l)
            np_l = torch.where(up, np_l + 1, torch.zeros_like(np_l))
            dt_l = torch.where(up, dt_l, dt_l * fdec)
            a_l = torch.where(up, a_l, torch.full_like(a_l, astart))
            a_m[mol], dt_m[mol], n_pos[mol] = a_l, dt_l, np_l
        dtb = dt_m[mol][local, None]
        va = va + dtb * f
        dr = dtb * va
        drn = torch.zeros(m, dtype=torch.float64, device=device)
        drn = drn.index_add(0, local, (dr * dr).sum(1))
        scale = torch.clamp(maxstep / drn.sqrt().clamp_min(1e-300), max=1.0)
        dr = dr * scale[local, None] * keep[:, None]
        pos[amask] = pos[amask] + dr
        v[amask] = va
    final = torch.split(pos.cpu(), [r.n_atoms for r in recs])
    return list(
        zip(
            energy.cpu().tolist(),
            fmax_out.cpu().tolist(),
            steps.cpu().tolist(),
            converged.cpu().tolist(),
            [p.numpy() for p in final],
        )
    )
