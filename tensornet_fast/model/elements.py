"""Element symbols, the set of elements a model was trained on (its domain), and the
atomic-number -> embedding-row table of models that carry an element list (matgl's
``element_types``).

Where the trained set comes from, first match wins (``trained_elements``):

1. the checkpoint says so: an ``elements`` entry (atomic numbers or symbols) at the top level of
   the checkpoint dict or in its ``hyper_parameters``;
2. the Atomref prior: torchmd-net fills ``initial_atomref`` from the training set's reference
   energies, which are exactly 0 for elements the set does not hold (the bundled default model:
   nonzero for H C N O F S Cl only, the list of its model card). Used only when some entries with
   Z >= 1 are zero and some are not (an all-zero or all-nonzero table says nothing);
3. otherwise unknown (``None``): every Z below ``max_z`` is accepted without a domain warning.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, InputError

# fmt: off
SYMBOLS = (
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S",
    "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge",
    "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd",
    "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd",
    "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg",
    "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm",
    "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn",
    "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
)
# fmt: on
NUMBERS = {s: z for z, s in enumerate(SYMBOLS) if z}


def symbol(z: int) -> str:
    """ "Si (Z=14)"; a number without a symbol for Z outside 0..118."""
    if 1 <= z < len(SYMBOLS):
        return f"{SYMBOLS[z]} (Z={z})"
    return f"Z={z}"


def symbols(zs: Iterable[int]) -> str:
    """ "H C N O" for (1, 6, 7, 8)."""
    return " ".join(SYMBOLS[z] if 0 <= z < len(SYMBOLS) else f"Z={z}" for z in zs)


def parse_elements(value: Any, where: str) -> tuple[int, ...]:
    """An ``elements`` entry (atomic numbers and/or symbols) as sorted atomic numbers."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        value = str(value).replace(",", " ").split()
    out = set()
    for item in value:
        if isinstance(item, str) and not item.strip().lstrip("-").isdigit():
            if item.strip() not in SYMBOLS[1:]:
                raise CheckpointError(f"{where}: {item!r} is not an element symbol")
            out.add(SYMBOLS.index(item.strip()))
        else:
            try:
                z = int(item)
            except (TypeError, ValueError):
                raise CheckpointError(f"{where}: {item!r} is not an atomic number") from None
            if not 1 <= z < len(SYMBOLS):
                raise CheckpointError(f"{where}: {z} is not an atomic number (1..118)")
            out.add(z)
    return tuple(sorted(out))


def trained_elements(
    ckpt: Mapping[str, Any] | None,
    hparams: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    max_z: int,
) -> tuple[int, ...] | None:
    """The atomic numbers the model was trained on, or None when the checkpoint cannot say
    (see the module docstring for the sources)."""
    for where, meta in (("checkpoint 'elements'", ckpt), ("hyper-parameter 'elements'", hparams)):
        if isinstance(meta, Mapping) and meta.get("elements") is not None:
            zs = parse_elements(meta["elements"], where)
            bad = [z for z in zs if z >= max_z]
            if bad:
                raise CheckpointError(
                    f"{where} lists {symbols(bad)}, beyond the model's max_z={max_z}"
                )
            return zs
    for key, value in state.items():
        if key.endswith("initial_atomref") and value.dim() == 2 and value.shape[1] == 1:
            ref = value[1:max_z, 0]
            nonzero = (ref != 0) & torch.isfinite(ref)
            if bool(nonzero.any()) and not bool(nonzero.all()):
                return tuple(int(z) + 1 for z in torch.nonzero(nonzero).flatten().tolist())
    return None


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
