"""Regenerate the bundled quick-start molecules, tensornet_fast/data/molecules.xyz: 12 molecules of
ASE's g2 set (elements H C N O S Cl, all covered by the default model).

The default model itself, tensornet_fast/data/default.ckpt, is a trained TensorNet and is NOT
written here: it comes from training/ (generate_data.py -> train.py -> evaluate.py); see
tensornet_fast/data/MODEL_CARD.md for how to reproduce it.
Run: .venv/bin/python scripts/make_default_inputs.py
"""

import os

from ase.build import molecule
from ase.io import write

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(root, "tensornet_fast", "data")
NAMES = [
    "H2O",
    "NH3",
    "CH4",
    "C2H6",
    "CH3OH",
    "HCOOH",
    "C6H6",
    "CH3CN",
    "CH3Cl",
    "CH3SH",
    "CH3CH2OH",
    "C4H4NH",
]

if __name__ == "__main__":
    write(os.path.join(DATA, "molecules.xyz"), [molecule(n) for n in NAMES], format="extxyz")
    print("wrote", os.path.join(DATA, "molecules.xyz"))
