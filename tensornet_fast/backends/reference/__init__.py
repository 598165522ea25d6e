"""The reference backend: TensorNet in plain PyTorch, 3x3 matrices as written in docs/spec.md."""
