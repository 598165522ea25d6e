"""The import paths of the flat 0.1 layout still work for one release, with a DeprecationWarning,
and name the very same objects as the new paths (a subprocess: each path warns once per
process)."""

from __future__ import annotations

import subprocess
import sys

from paths import ROOT

SCRIPT = """
import importlib, warnings
import tensornet_fast
OLD = {
    "tensornet_fast.compiled": ("tensornet_fast.md.compile", "compile_model"),
    "tensornet_fast.export": ("tensornet_fast.md.export", "export_model"),
    "tensornet_fast.calculator": ("tensornet_fast.integrations.ase", "TensorNetCalculator"),
    "tensornet_fast.checkpoint": ("tensornet_fast.model.formats.torchmdnet", "load_checkpoint"),
    "tensornet_fast.config": ("tensornet_fast.model.config", "ModelConfig"),
    "tensornet_fast.params": ("tensornet_fast.model.params", "RepresentationParams"),
    "tensornet_fast.priors": ("tensornet_fast.model.priors", "zbl_from_edges"),
    "tensornet_fast.traceable": ("tensornet_fast.md.traceable", "dense_edges"),
    "tensornet_fast.reference": ("tensornet_fast.backends.reference.math", "atomic_energies"),
    "tensornet_fast.cpu_backend": ("tensornet_fast.backends.cpu.backend", "CpuBackend"),
    "tensornet_fast.triton_backend": ("tensornet_fast.backends.triton.backend", "TritonBackend"),
    "tensornet_fast.ops.radial": ("tensornet_fast.backends.shared.radial", "cosine_cutoff"),
    "tensornet_fast.ops.tensor_algebra": (
        "tensornet_fast.backends.reference.tensor_algebra", "decompose"),
}
for old, (new, name) in OLD.items():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
               for w in seen), (old, [str(w.message) for w in seen])
    assert getattr(module, name) is getattr(importlib.import_module(new), name), old
from tensornet_fast.compiled import compile_model  # the 0.1 spellings of the public API
from tensornet_fast.export import export_model
from tensornet_fast.md import CapacityError, MDStep
from tensornet_fast.errors import NeighborListOverflowError
assert CapacityError is NeighborListOverflowError
print("ok")
"""


def test_old_import_paths_warn_and_alias():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
