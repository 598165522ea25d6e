"""The fast CPU backend: compressed layout, C++ kernels (csrc/), hand-written force backward."""
