"""PyTorch reference operations of TensorNet. Each is the trusted definition that a fused
kernel of the same name (``tensornet_fast.kernels``) is tested against."""
