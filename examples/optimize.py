"""Geometry optimisation of a molecule with ASE's BFGS and the bundled model.

.venv/bin/python examples/optimize.py [--model CKPT] [--molecule C6H6] [--fmax 0.01]
"""

import argparse

from ase.build import molecule
from ase.optimize import BFGS

from tensornet_fast import TensorNetCalculator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="default")
parser.add_argument("--molecule", default="C6H6", help="a name from ASE's g2 set")
parser.add_argument("--fmax", type=float, default=0.01)
args = parser.parse_args()

atoms = molecule(args.molecule)
atoms.rattle(0.05, seed=0)
atoms.calc = TensorNetCalculator(args.model)
start = atoms.get_potential_energy()
BFGS(atoms, logfile=None).run(fmax=args.fmax, steps=500)
print(
    f"{args.molecule}: {start:.6f} -> {atoms.get_potential_energy():.6f} eV, "
    f"max force {abs(atoms.get_forces()).max():.4f} eV/A"
)
