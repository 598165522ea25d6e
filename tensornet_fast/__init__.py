"""tensornet_fast: a drop-in, kernel-accelerated inference engine for TensorNet potentials.

``import tensornet_fast`` needs only torch: Triton and the compiled extension are optional.
"""

from .backends import available_backends, resolve_backend
from .checkpoint import load_checkpoint
from .config import ModelConfig
from .errors import CheckpointError, InputError
from .model import NAMED_MODELS, TensorNetModel, load_model
from .neighbors import NeighborList, radius_graph, radius_graph_full


def __getattr__(name):
    # ASE is imported only when the calculator is asked for.
    if name == "TensorNetCalculator":
        from .calculator import TensorNetCalculator

        return TensorNetCalculator
    raise AttributeError(f"module 'tensornet_fast' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "InputError",
    "ModelConfig",
    "NAMED_MODELS",
    "NeighborList",
    "TensorNetCalculator",
    "TensorNetModel",
    "available_backends",
    "load_checkpoint",
    "load_model",
    "radius_graph",
    "radius_graph_full",
    "resolve_backend",
]
