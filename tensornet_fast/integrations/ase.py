"""ASE calculator: energy, forces, stress (periodic cells) and per-atom energies.

Units: ASE works in eV and Angstrom. A checkpoint's units are whatever its training data used;
``energy_unit`` (eV per model energy unit) and ``length_unit`` (Angstrom per model length unit)
convert, e.g. ``energy_unit=ase.units.kcal / ase.units.mol`` for a kcal/mol model. The defaults
(1.0, 1.0) mean the model was trained in eV and Angstrom.
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ..backends import warn_once
from ..errors import InputError
from ..model import TensorNetModel, load_model


class TensorNetCalculator(Calculator):
    """``TensorNetCalculator(model_or_path="default", device="cpu", dtype=None, backend="auto",
    filter_mode="auto")``

    ``backend`` and ``filter_mode`` are ``load_model``'s (used when a path is given); ``dtype``
    (torch.float32/float64) converts the model (``filter_mode="auto"`` is exact in float64);
    ``charge`` is the total charge of the
    system for models trained with ``charge: true`` (``atoms.info["charge"]`` overrides it).
    Periodic systems need ``pbc`` all True (the model has no mixed boundary conditions; matgl
    models compute mixed ``pbc`` as a molecule, as matgl does, with a warning); cutoffs
    larger than half the cell are exact (every image counts). matgl models give eV, eV/A and
    eV/A^3 (ASE's units; matgl's own calculator defaults to GPa).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model_or_path: TensorNetModel | str = "default",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        filter_mode: str = "auto",
        energy_unit: float = 1.0,
        length_unit: float = 1.0,
        charge: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(model_or_path, TensorNetModel):
            model = model_or_path.to(device)
        else:
            model = load_model(
                model_or_path, device=device, backend=backend, filter_mode=filter_mode
            )
        if dtype is not None:
            model = model.to(dtype)
        self.model = model.eval()
        self.device = torch.device(device)
        self.energy_unit = float(energy_unit)
        self.length_unit = float(length_unit)
        self.charge = float(charge)

    def _tensors(self, atoms):
        dtype = self.model.dtype
        z = torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device)
        pos = torch.as_tensor(atoms.positions / self.length_unit, dtype=dtype, device=self.device)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any() and not pbc.all():
            if self.model.config.source_format != "matgl":
                raise InputError(
                    f"mixed periodicity {pbc.tolist()} is not supported: use all or none"
                )
            # matgl's own calculator treats any pbc short of all True as a molecule
            warn_once(
                "matgl-mixed-pbc",
                f"mixed periodicity {pbc.tolist()}: computed as a molecule (no periodic "
                "images), as matgl does for its models",
            )
        box = None
        if pbc.all():
            box = torch.as_tensor(
                atoms.cell.array / self.length_unit, dtype=dtype, device=self.device
            )
        charge = atoms.info.get("charge", self.charge)
        q = torch.tensor([float(charge)], dtype=dtype, device=self.device)
        return z, pos, box, q

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress and not self.atoms.pbc.all():
            raise PropertyNotImplementedError("stress needs a periodic cell (pbc all True)")
        z, pos, box, q = self._tensors(self.atoms)
        out = self.model.compute(
            z,
            pos,
            box=box,
            q=q if self.model.config.charge else None,
            forces=True,
            stress=want_stress,
            atom_energies=True,
        )
        e_unit, l_unit = self.energy_unit, self.length_unit
        energy = float(out["energy"].sum()) * e_unit
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].double().cpu().numpy() * (e_unit / l_unit)
        self.results["energies"] = out["atom_energies"].double().cpu().numpy() * e_unit
        if want_stress:
            # model stress is (1/V_model) dE/d(strain); strain is dimensionless, V converts.
            sigma = out["stress"][0].double().cpu().numpy() * e_unit / l_unit**3
            self.results["stress"] = sigma.flat[[0, 4, 8, 5, 2, 1]]  # Voigt: xx yy zz yz xz xy
