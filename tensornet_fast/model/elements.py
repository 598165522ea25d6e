"""Chemical symbols by atomic number, and the atomic-number -> embedding-row table of models
that carry an element list (matgl's ``element_types``)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..errors import CheckpointError, InputError

# SYMBOLS[z] is the symbol of atomic number z (index 0: no element).
SYMBOLS = ("X",) + tuple(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As
    Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd
    Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am
    Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og""".split()
)
NUMBERS = {s: z for z, s in enumerate(SYMBOLS) if z}


def symbol(z: int) -> str:
    return SYMBOLS[z] if 0 < z < len(SYMBOLS) else f"Z={z}"


@functools.lru_cache(maxsize=8)
def _row_table(element_types: tuple[str, ...]) -> Tensor:
    """[119] int64: the embedding row of each atomic number, -1 where the model has none."""
    unknown = [s for s in element_types if s not in NUMBERS]
    if unknown:
        raise CheckpointError(f"element_types holds unknown chemical symbols {unknown}")
    table = torch.full((len(SYMBOLS),), -1, dtype=torch.long)
    for row, s in enumerate(element_types):
        table[NUMBERS[s]] = row
    return table


def element_rows(element_types: tuple[str, ...], z: Tensor) -> Tensor:
    """Embedding rows [N] of atomic numbers ``z`` [N]; ``InputError`` naming every element the
    model does not have."""
    table = _row_table(tuple(element_types)).to(z.device)
    inside = (z > 0) & (z < table.shape[0])
    rows = torch.where(inside, table[z.clamp(0, table.shape[0] - 1)], torch.full_like(z, -1))
    if bool((rows < 0).any()):
        bad = [symbol(int(v)) for v in torch.unique(z[rows < 0])[:10].tolist()]
        shown = " ".join(element_types[:10]) + (" ..." if len(element_types) > 10 else "")
        raise InputError(
            f"elements {', '.join(bad)} are not in this model's element_types "
            f"({len(element_types)}: {shown}); z must be atomic numbers of those elements"
        )
    return rows
