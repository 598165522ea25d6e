"""OpenMM: tensornet_fast as an OpenMM-ML potential, driven through ``openmm.PythonForce``.

    from openmmml import MLPotential
    potential = MLPotential("tensornet_fast", modelPath="model.ckpt")   # or "default"
    system = potential.createSystem(topology, charge=0)                  # all atoms ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)   # ML/MM (mechanical)

``openmmml`` finds this module through the ``openmmml.potentials`` entry point (pyproject.toml);
``register()`` does the same by hand (e.g. in a source checkout that was not pip-installed).

* **Loading.** ``modelPath`` goes to :func:`tensornet_fast.load_model` with the other keyword
  arguments of ``MLPotential(...)`` (``backend``, ``filter_mode``, ``precision``, ``layout``,
  ...), so a torchmd-net >= 3.0 checkpoint is read in its own (blocked) weight layout -- never
  permuted the way ``MLPotential("torchmdnet")`` does through torchmd-net's loader with
  ``check_errors=False``, which reads such files as the pre-2.6.2 interleaved layout.
* **Units.** ``lengthScale`` (nm per model length unit, default 0.1: Angstrom) and
  ``energyScale`` (kJ/mol per model energy unit, default ``EV_TO_KJ_PER_MOL``: eV) convert;
  OpenMM gets kJ/mol and kJ/mol/nm.
* **createSystem / addForces arguments.** ``charge`` (total charge of the ML atoms, used only by
  models trained with charges), ``device`` (default: the model's, i.e. ``load_model``'s "cpu"
  unless ``MLPotential(..., device=...)``), ``skin`` (Verlet skin in nm, default 0.05; 0 searches
  the neighbours every step), ``verlet=False`` to call the model plainly every step.
* **Periodic boxes** come from the topology (``createSystem``) or the MM system
  (``createMixedSystem``); the box of each step comes from the OpenMM ``State`` (a barostat may
  change it). TensorNet is local: ``getMLLongRange()`` is False.

Each step runs :class:`tensornet_fast.md.MDStep` (eager path on CPU: the candidates within
cutoff + skin are cut to exactly the pairs of a fresh search, then the model's own backend
kernels; the results are those of ``model(z, pos, box=..., q=...)``). A new box (barostat) builds
a new step; positions that OpenMM wraps into the box only trigger a new candidate search.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import openmm
import torch
from openmm import unit
from openmmml.mlpotential import MLPotential, MLPotentialImpl, MLPotentialImplFactory
from torch import Tensor

from ..errors import InputError
from ..model import TensorNetModel, load_model

NAME = "tensornet_fast"
# kJ/mol per eV: e * N_A / 1000 with the exact SI values of e and N_A (CODATA 2018).
EV_TO_KJ_PER_MOL = 1.602176634e-19 * 6.02214076e23 / 1000.0  # 96.48533212331001
ANGSTROM_TO_NM = 0.1
# Arguments the mechanical embedding (openmmml 1.8) passes on to addForces for its own use.
_EMBEDDING_ARGS = {"mlLongRange", "linkAtomDistances", "interpolate", "embedding"}


class TensorNetFastPotentialImplFactory(MLPotentialImplFactory):
    """Creates :class:`TensorNetFastPotentialImpl` for ``MLPotential("tensornet_fast", ...)``."""

    def createImpl(  # noqa: N802 (openmmml's interface)
        self,
        name: str,
        modelPath: str | TensorNetModel = "default",  # noqa: N803
        lengthScale: float = ANGSTROM_TO_NM,  # noqa: N803
        energyScale: float = EV_TO_KJ_PER_MOL,  # noqa: N803
        **loadArgs: Any,  # noqa: N803
    ) -> TensorNetFastPotentialImpl:
        return TensorNetFastPotentialImpl(name, modelPath, lengthScale, energyScale, loadArgs)


class TensorNetFastPotentialImpl(MLPotentialImpl):
    """One loaded model; ``addForces`` adds a ``PythonForce`` evaluating it on the ML atoms."""

    def __init__(
        self,
        name: str,
        modelPath: str | TensorNetModel,  # noqa: N803
        lengthScale: float,  # noqa: N803
        energyScale: float,  # noqa: N803
        loadArgs: dict[str, Any],  # noqa: N803
    ):
        for label, value in (("lengthScale", lengthScale), ("energyScale", energyScale)):
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise InputError(f"{label} must be a positive number, got {value!r}")
        self.name = name
        self.lengthScale = float(lengthScale)
        self.energyScale = float(energyScale)
        self.loadArgs = dict(loadArgs)
        if isinstance(modelPath, TensorNetModel):
            self.modelPath, self.model = None, modelPath.eval()
        else:
            self.modelPath = modelPath
            self.model = load_model(modelPath, **self.loadArgs)

    def getMLLongRange(self) -> bool:  # noqa: N802
        """TensorNet sees only pairs within its cutoff: no long-range interactions."""
        return False

    def addForces(  # noqa: N802
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Iterable[int] | None,
        forceGroup: int,  # noqa: N803
        charge: float = 0.0,
        device: str | torch.device | None = None,
        skin: float = 0.05,
        verlet: bool = True,
        **args: Any,
    ) -> None:
        unknown = sorted(set(args) - _EMBEDDING_ARGS)
        if unknown:
            warnings.warn(f"tensornet_fast ignores the arguments {unknown}", stacklevel=2)
        all_atoms = list(topology.atoms())
        indices = list(range(len(all_atoms))) if atoms is None else [int(a) for a in atoms]
        z = []
        for i in indices:
            if not 0 <= i < len(all_atoms):
                n = len(all_atoms)
                raise InputError(f"atoms: index {i} is outside the topology (0..{n - 1})")
            element = all_atoms[i].element
            if element is None:
                raise InputError(
                    f"atoms: topology atom {i} ({all_atoms[i].name!r}) has no element; the model "
                    "needs the atomic number of every ML atom"
                )
            z.append(element.atomic_number)
        if not (isinstance(skin, (int, float)) and np.isfinite(skin) and skin >= 0):
            raise InputError(f"skin must be a length in nm >= 0, got {skin!r}")
        model = self.model if device is None else self.model.to(device)
        periodic = (
            topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        )
        compute = TensorNetForceCompute(
            model,
            z,
            charge=charge,
            lengthScale=self.lengthScale,
            energyScale=self.energyScale,
            periodic=periodic,
            skin=skin / self.lengthScale,
            verlet=verlet,
            spec=None if self.modelPath is None else (self.modelPath, self.loadArgs, device),
        )
        force = openmm.PythonForce(compute)
        force.setName(NAME)
        force.setForceGroup(forceGroup)
        force.setUsesPeriodicBoundaryConditions(periodic)
        if atoms is not None:
            force.setParticles(indices)
        system.addForce(force)


class TensorNetForceCompute:
    """The ``PythonForce`` function: ``compute(state) -> (energy kJ/mol, forces kJ/mol/nm
    [n_atoms, 3])`` for the ML atoms (the State holds only those when the force has particles).

    ``skin`` is in model length units. Picklable (for ``XmlSerializer``) when the model came
    from a path: the pickle holds the path and the load arguments, not the weights."""

    def __init__(
        self,
        model: TensorNetModel,
        z: Iterable[int],
        *,
        charge: float = 0.0,
        lengthScale: float = ANGSTROM_TO_NM,  # noqa: N803
        energyScale: float = EV_TO_KJ_PER_MOL,  # noqa: N803
        periodic: bool = False,
        skin: float = 0.5,
        verlet: bool = True,
        spec: tuple | None = None,
    ):
        self.model = model.eval()
        self.device = model.device
        self.z = torch.as_tensor(list(z), dtype=torch.long, device=self.device)
        if self.z.numel() == 0:
            raise InputError("atoms: no ML atoms")
        self.charge = float(charge)
        self.q = torch.tensor([self.charge], dtype=model.dtype, device=self.device)
        self.length = float(lengthScale)
        self.energy = float(energyScale)
        self.force_scale = self.energy / self.length  # model force units -> kJ/mol/nm
        self.periodic = bool(periodic)
        self.skin = float(skin)
        self.verlet = bool(verlet)
        self.spec = spec
        self._step = None  # the MDStep of the current box
        self._box_t: Tensor | None = None

    def __reduce__(self):
        if self.spec is None:
            return super().__reduce__()
        return (
            _rebuild_compute,
            (
                self.spec,
                self.z.tolist(),
                dict(
                    charge=self.charge,
                    lengthScale=self.length,
                    energyScale=self.energy,
                    periodic=self.periodic,
                    skin=self.skin,
                    verlet=self.verlet,
                ),
            ),
        )

    def evaluate(self, pos: Tensor, box: Tensor | None) -> tuple[Tensor, Tensor]:
        """Energy [1, 1] and forces [n, 3] in model units at ``pos`` (and ``box``)."""
        if not self.verlet:
            return self.model(self.z, pos, box=box, q=self.q)
        from ..md import MDStep

        step = self._step
        if step is None or (box is not None and not torch.equal(box, self._box_t)):
            self._step = step = MDStep(self.model, self.z, pos, box=box, q=self.q, skin=self.skin)
            self._box_t = box
        return step(pos)

    def __call__(self, state: openmm.State):
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        dtype = self.model.dtype
        pos_t = torch.from_numpy(np.ascontiguousarray(pos) / self.length).to(self.device, dtype)
        box_t = None
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            box_t = torch.from_numpy(np.ascontiguousarray(box) / self.length).to(self.device, dtype)
        energy, forces = self.evaluate(pos_t, box_t)
        e = float(energy.sum()) * self.energy
        f = forces.detach().to("cpu", torch.float64).numpy() * self.force_scale
        return e, f


def _rebuild_compute(spec: tuple, z: list[int], kwargs: dict) -> TensorNetForceCompute:
    path, load_args, device = spec
    model = load_model(path, **load_args)
    if device is not None:
        model = model.to(device)
    return TensorNetForceCompute(model, z, spec=spec, **kwargs)


def register() -> None:
    """Register ``MLPotential("tensornet_fast")`` without the entry point (source checkouts)."""
    if NAME not in MLPotential._implFactories:
        MLPotential.registerImplFactory(NAME, TensorNetFastPotentialImplFactory())
