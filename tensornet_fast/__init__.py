"""tensornet_fast: a drop-in, kernel-accelerated inference engine for TensorNet potentials.

``import tensornet_fast`` needs only torch: Triton and the compiled extension are optional.
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # OpenMP threads that spin at barriers (libgomp's default) starve when another process
    # holds a core: on a 2-core machine with one core busy, a 12-molecule batch took 2.2 s with
    # 2 threads and 0.10 s with 1; with passive waiting, 0.16 s. Only a default: an explicit
    # OMP_WAIT_POLICY wins, and it takes effect only if torch is not imported yet.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch's CPU allocator backs tensors of >= 2 MB with transparent huge pages when this is set
# (read at the process's first such allocation): first touch of fresh memory then faults once
# per 2 MB instead of per 4 KB. Filling two fresh 42 MB filter tables took 34 ms without, 9 ms
# with (5 ms reused); exact-filter water (1029 atoms) 567 -> 448 ms per call, tabulated water
# (10k atoms) 1.57 -> 1.25 s. Only a default: an explicit THP_MEM_ALLOC_ENABLE wins.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from . import _deprecated  # noqa: E402
from .backends import available_backends, resolve_backend  # noqa: E402
from .errors import CheckpointError, InputError, NeighborListOverflowError  # noqa: E402
from .model import (  # noqa: E402
    NAMED_MODELS,
    ModelConfig,
    TensorNetModel,
    load_checkpoint,
    load_model,
)
from .neighbors import (  # noqa: E402
    NeighborList,
    StaticNeighborList,
    StaticRadiusGraph,
    VerletList,
    radius_graph,
    radius_graph_full,
    radius_graph_static,
)

_deprecated.install()


def __getattr__(name):
    # ASE is imported only when the calculator is asked for.
    if name == "TensorNetCalculator":
        from .integrations.ase import TensorNetCalculator

        return TensorNetCalculator
    raise AttributeError(f"module 'tensornet_fast' has no attribute {name!r}")


__version__ = "0.2.0"

__all__ = [
    "CheckpointError",
    "InputError",
    "ModelConfig",
    "NAMED_MODELS",
    "NeighborList",
    "NeighborListOverflowError",
    "StaticNeighborList",
    "StaticRadiusGraph",
    "TensorNetCalculator",
    "TensorNetModel",
    "VerletList",
    "available_backends",
    "load_checkpoint",
    "load_model",
    "radius_graph",
    "radius_graph_full",
    "radius_graph_static",
    "resolve_backend",
]
