"""Old import paths of the flat 0.1 layout, kept for one release (until 0.3).

One meta-path finder maps each old module name to the module that now holds its code, so
``import tensornet_fast.cpu_backend`` and ``from tensornet_fast.priors import zbl_from_edges``
still work, with a DeprecationWarning, and name the very same module objects (nothing is
copied, nothing goes stale). No files are left at the old paths."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "tensornet_fast.calculator": "tensornet_fast.integrations.ase",
    "tensornet_fast.checkpoint": "tensornet_fast.model.formats.torchmdnet",
    "tensornet_fast.compiled": "tensornet_fast.md.compile",
    "tensornet_fast.config": "tensornet_fast.model.config",
    "tensornet_fast.cpu_backend": "tensornet_fast.backends.cpu.backend",
    "tensornet_fast.export": "tensornet_fast.md.export",
    "tensornet_fast.ops": "tensornet_fast.backends.shared",
    "tensornet_fast.ops.radial": "tensornet_fast.backends.shared.radial",
    "tensornet_fast.ops.tensor_algebra": "tensornet_fast.backends.reference.tensor_algebra",
    "tensornet_fast.params": "tensornet_fast.model.params",
    "tensornet_fast.priors": "tensornet_fast.model.priors",
    "tensornet_fast.reference": "tensornet_fast.backends.reference.math",
    "tensornet_fast.traceable": "tensornet_fast.md.traceable",
    "tensornet_fast.triton_backend": "tensornet_fast.backends.triton.backend",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]} in tensornet_fast 0.2; the old path "
            "goes away in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(MOVED[spec.name])
        self._spec = module.__spec__  # the import system overwrites it with the alias's spec
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


def install() -> None:
    # First in line: "tensornet_fast.ops" aliases a package whose __path__ would otherwise let
    # the path finder load "tensornet_fast.ops.radial" a second time under the old name.
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
