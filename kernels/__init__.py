"""Fused Triton kernels (installed as ``tensornet_fast.kernels``). Importing this package does
not import Triton; each kernel module does, and is only loaded by the Triton backend."""
