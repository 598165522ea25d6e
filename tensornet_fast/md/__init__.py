"""Static-shape evaluation: the traceable core, ``torch.compile``, the fixed-size MD step
(CUDA graphs) and export to C++ hosts (AOTInductor)."""

from .step import CapacityError, MDStep

__all__ = ["CapacityError", "MDStep"]
