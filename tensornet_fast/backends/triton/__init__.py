"""The Triton backend: fused GPU kernels (``tensornet_fast.kernels``) for the edge passes and
3x3 products."""
