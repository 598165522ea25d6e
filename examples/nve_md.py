"""Short NVE molecular dynamics of ethanol with ASE and the bundled model.

    .venv/bin/python examples/nve_md.py [--model CKPT] [--steps 400]

Prints the total energy every 50 steps: with a 0.25 fs step it stays constant to ~1e-4 eV.
"""

import argparse

import numpy as np
from ase import units
from ase.build import molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from tensornet_fast import TensorNetCalculator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="default")
parser.add_argument("--steps", type=int, default=400)
args = parser.parse_args()

atoms = molecule("CH3CH2OH")
atoms.calc = TensorNetCalculator(args.model)
MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
for step in range(0, args.steps + 1, 50):
    print(
        f"step {step:5d}  E_pot {atoms.get_potential_energy():+.6f}  "
        f"E_tot {atoms.get_total_energy():+.6f} eV"
    )
    dyn.run(50)
