"""Regenerate the bundled quick-start files in tensornet_fast/data/:
- default.ckpt: a random-weight TensorNet (F=32, 2 layers, K=16, r_c=5 A) written by torchmd-net
  through the tests' generator (tests/oracle.py). It has no physical meaning; it stands in until
  a trained model ships.
- molecules.xyz: 12 molecules of ASE's g2 set.
Run: .venv/bin/python scripts/make_default_inputs.py
"""

import os
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "tests"))

from ase.build import molecule  # noqa: E402
from ase.io import write  # noqa: E402
from oracle import make_checkpoint  # noqa: E402

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
    make_checkpoint(
        os.path.join(DATA, "default.ckpt"),
        seed=2026,
        embedding_dimension=32,
        num_layers=2,
        num_rbf=16,
        cutoff_upper=5.0,
        max_z=20,
    )
    write(os.path.join(DATA, "molecules.xyz"), [molecule(n) for n in NAMES], format="extxyz")
    print("wrote", os.listdir(DATA))
