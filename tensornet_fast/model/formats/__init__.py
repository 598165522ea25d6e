"""Readers of model files, one module per format (torchmd-net checkpoints today)."""
