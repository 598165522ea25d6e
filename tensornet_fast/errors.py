"""Exceptions raised by tensornet_fast. The input and checkpoint errors derive from
``ValueError`` so callers that already catch torchmd-net's ``ValueError``/``AssertionError``
style failures keep working; a full fixed-capacity neighbour list is a ``RuntimeError``."""


class CheckpointError(ValueError):
    """The file is not a usable TensorNet checkpoint (wrong model, missing keys, bad shapes)."""


class InputError(ValueError):
    """The atoms handed to the model cannot give a meaningful answer (NaN positions, unknown
    elements, coincident atoms, shape/dtype/device mismatch, ...)."""


class NeighborListOverflowError(RuntimeError):
    """A fixed-capacity radius graph (``StaticRadiusGraph``) found more edges than its buffers
    hold, or a position left the range its grid was planned for. ``required`` is the capacity
    that would have held the edges (0 when the plan, not the capacity, must change)."""

    def __init__(self, message: str, required: int = 0, capacity: int = 0):
        super().__init__(message)
        self.required = required
        self.capacity = capacity
