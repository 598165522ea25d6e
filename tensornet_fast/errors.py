"""Exceptions raised by tensornet_fast. Both derive from ``ValueError`` so callers that
already catch torchmd-net's ``ValueError``/``AssertionError`` style failures keep working."""


class CheckpointError(ValueError):
    """The file is not a usable TensorNet checkpoint (wrong model, missing keys, bad shapes)."""


class InputError(ValueError):
    """The atoms handed to the model cannot give a meaningful answer (NaN positions, unknown
    elements, coincident atoms, shape/dtype/device mismatch, ...)."""
