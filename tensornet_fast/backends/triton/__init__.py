"""The Triton backend: fused GPU kernels (``tensornet_fast.kernels``) for the radial filters, the
edge passes and the 3x3 products; ``backend.py`` is the entry point."""

from .backend import TritonBackend

__all__ = ["TritonBackend"]
