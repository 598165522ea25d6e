"""The fast CPU backend: compressed layout, C++ kernels (csrc/), hand-written force backward.
``backend.py`` is the entry point; ``filters.py`` the radial filters per call, ``graph.py`` the
neighbour list as the kernels take it, ``fused.py`` the compiled path, ``torch_passes.py`` the
same math in chunked PyTorch (no extension), ``ops.py`` the access to the compiled kernels."""

from .backend import CpuBackend

__all__ = ["CpuBackend"]
