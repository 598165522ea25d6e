"""ASE calculator: energy, forces, stress (periodic cells) and per-atom energies.

Units: ASE works in eV and Angstrom. A checkpoint's units are whatever its training data used;
``energy_unit`` (eV per model energy unit) and ``length_unit`` (Angstrom per model length unit)
convert, e.g. ``energy_unit=ase.units.kcal / ase.units.mol`` for a kcal/mol model. The defaults
(1.0, 1.0) mean the model was trained in eV and Angstrom.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ..backends import warn_once
from ..errors import InputError
from ..model import TensorNetModel, load_model

_PRECISIONS = {32: torch.float32, 64: torch.float64}
# keywords ASE's Calculator base class takes; every other unknown keyword is an error
_ASE_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")


class TensorNetCalculator(Calculator):
    """``TensorNetCalculator(model_or_path="default", device="cpu", *, precision=None,
    backend="auto", filter_mode="auto", layout="auto", derivative=True, energy_unit=1.0,
    length_unit=1.0, charge=0.0, **hyper_parameter_overrides)``

    With a checkpoint path (or ``"default"``) the keywords are ``load_model``'s: ``precision``
    (32 or 64), ``backend``, ``filter_mode``, ``layout``, ``derivative`` (False: energies only,
    no forces or stress) and hyper-parameter overrides (e.g. ``remove_ref_energy=False``).
    With a loaded :class:`TensorNetModel` only ``device`` and ``precision`` apply; they convert
    that model in place (``nn.Module.to``). Unknown keywords raise ``InputError``.
    ``dtype=torch.float64`` still works for one release (DeprecationWarning: use
    ``precision=64``). ``charge`` is the total charge of the system for models trained with
    ``charge: true`` (``atoms.info["charge"]`` overrides it).

    Periodic systems need ``pbc`` all True (the model has no mixed boundary conditions; matgl
    models compute mixed ``pbc`` as a molecule, as matgl does, with a warning); cutoffs larger
    than half the cell are exact (every image counts). matgl models give eV, eV/A and eV/A^3
    (ASE's units; matgl's own calculator defaults to GPa).

    Threads: one calculator may be shared by several threads; its calls are serialised by a
    lock (ASE calculators keep the last atoms and results as state, so unserialised calls
    would hand one thread another's results). For parallel throughput give each thread its
    own calculator over the same model: the model itself is thread-safe.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model_or_path: TensorNetModel | str = "default",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        precision: int | None = None,
        backend: str = "auto",
        filter_mode: str = "auto",
        layout: str = "auto",
        derivative: bool = True,
        energy_unit: float = 1.0,
        length_unit: float = 1.0,
        charge: float = 0.0,
        **kwargs: Any,
    ):
        ase_kwargs = {k: kwargs.pop(k) for k in _ASE_KEYWORDS if k in kwargs}
        overrides = kwargs  # what is left: hyper-parameter overrides for load_model
        super().__init__(**ase_kwargs)
        self._lock = threading.RLock()
        precision = _resolve_precision(precision, dtype)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(
                f"TensorNetCalculator: device={device!r} is not a torch device"
            ) from exc
        for name, value in (("energy_unit", energy_unit), ("length_unit", length_unit)):
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise InputError(
                    f"TensorNetCalculator: {name}={value!r} must be a positive finite number"
                )
        if isinstance(model_or_path, TensorNetModel):
            given = {
                k: v
                for k, v in (
                    ("backend", backend),
                    ("filter_mode", filter_mode),
                    ("layout", layout),
                    ("derivative", derivative),
                )
                if v != {"derivative": True}.get(k, "auto")
            }
            given.update(overrides)
            if given:
                raise InputError(
                    f"TensorNetCalculator: {', '.join(f'{k}={v!r}' for k, v in given.items())} "
                    "apply when loading a checkpoint; this calculator was given a loaded model "
                    "(pass them to load_model instead)"
                )
            model = model_or_path.to(self.device)
            if precision is not None:
                model = model.to(_PRECISIONS[precision])
        else:
            if precision is not None:
                overrides["precision"] = precision
            try:
                model = load_model(
                    model_or_path,
                    device=self.device,
                    derivative=derivative,
                    backend=backend,
                    layout=layout,
                    filter_mode=filter_mode,
                    **overrides,
                )
            except TypeError as exc:  # an unknown hyper-parameter override
                known = ", ".join(("precision", "backend", "filter_mode", "layout", "derivative"))
                raise InputError(
                    f"TensorNetCalculator: {exc}; keywords are device, {known}, energy_unit, "
                    "length_unit, charge, ASE's (label, directory, atoms) and hyper-parameter "
                    "overrides of the checkpoint"
                ) from exc
        self.model = model.eval()
        self.derivative = bool(model.derivative)
        if not self.derivative:  # energies only
            self.implemented_properties = ["energy", "free_energy", "energies"]
        self.energy_unit = float(energy_unit)
        self.length_unit = float(length_unit)
        self.charge = float(charge)

    # ASE keeps the last atoms and results on the calculator: one call at a time
    def get_property(self, name, atoms=None, allow_calculation=True):
        with self._lock:
            return super().get_property(name, atoms, allow_calculation)

    def calculation_required(self, atoms, properties):
        with self._lock:
            return super().calculation_required(atoms, properties)

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
        with self._lock:
            self._calculate(atoms, properties, system_changes)

    def _calculate(self, atoms, properties, system_changes):
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
            forces=self.derivative,
            stress=want_stress,
            atom_energies=True,
        )
        e_unit, l_unit = self.energy_unit, self.length_unit
        energy = float(out["energy"].sum()) * e_unit
        self.results["energy"] = self.results["free_energy"] = energy
        if self.derivative:
            self.results["forces"] = out["forces"].double().cpu().numpy() * (e_unit / l_unit)
        self.results["energies"] = out["atom_energies"].double().cpu().numpy() * e_unit
        if want_stress:
            # model stress is (1/V_model) dE/d(strain); strain is dimensionless, V converts.
            sigma = out["stress"][0].double().cpu().numpy() * e_unit / l_unit**3
            self.results["stress"] = sigma.flat[[0, 4, 8, 5, 2, 1]]  # Voigt: xx yy zz yz xz xy


def _resolve_precision(precision: int | None, dtype: torch.dtype | None) -> int | None:
    if precision is not None and precision not in _PRECISIONS:
        raise InputError(f"TensorNetCalculator: precision={precision!r}; use 32 or 64")
    if dtype is None:
        return precision
    warnings.warn(
        "TensorNetCalculator(dtype=...) is deprecated and goes in 0.3: use precision=32 or 64 "
        "(load_model's keyword)",
        DeprecationWarning,
        stacklevel=3,
    )
    from_dtype = {v: k for k, v in _PRECISIONS.items()}.get(dtype)
    if from_dtype is None:
        raise InputError(f"TensorNetCalculator: dtype={dtype!r}; use precision=32 or 64")
    if precision is not None and precision != from_dtype:
        raise InputError(
            f"TensorNetCalculator: precision={precision} and dtype={dtype} disagree; "
            "give precision only"
        )
    return from_dtype
