"""Element symbols <-> atomic numbers for the readers, without ASE (the plain-XYZ path, the one
``make demo`` runs, needs only torch and numpy); the table is the model's (model/elements.py)."""

from __future__ import annotations

import numpy as np

from ..model.elements import SYMBOLS  # 0: "X", not an element; readers refuse it

MAX_ELEMENT = len(SYMBOLS) - 1  # 118
_BY_UPPER = {s.upper(): z for z, s in enumerate(SYMBOLS) if z > 0}


def atomic_number(token: str) -> int:
    """``"C"``, ``"cl"``, ``"6"`` -> 6; raises ValueError naming the token otherwise."""
    if token.isdigit():
        return int(token)
    z = _BY_UPPER.get(token.upper())
    if z is None:
        raise ValueError(f"unknown element {token[:12]!r}")
    return z


def symbol(z: int) -> str:
    """The symbol of ``z``, or ``Z<z>`` for numbers that are not elements."""
    return SYMBOLS[z] if 0 < z <= MAX_ELEMENT else f"Z{z}"


def symbols(zs) -> list[str]:
    return [symbol(int(z)) for z in zs]


def hill_formula(z: np.ndarray | None) -> str:
    """Hill order: C, H, then alphabetical; without carbon all alphabetical. Numbers that are
    not elements appear as ``Z<n>`` (so a bad record still shows what it held)."""
    if z is None or z.size == 0:
        return ""
    values, counts = np.unique(np.asarray(z), return_counts=True)
    items = {symbol(int(v)): int(c) for v, c in zip(values, counts)}
    if "C" in items:
        order = ["C"] + (["H"] if "H" in items else []) + sorted(set(items) - {"C", "H"})
    else:
        order = sorted(items)
    return "".join(s + (str(items[s]) if items[s] > 1 else "") for s in order)
