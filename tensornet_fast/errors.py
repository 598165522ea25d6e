"""Every exception tensornet_fast raises on purpose, in one place.

The input and checkpoint errors derive from ``ValueError`` so callers that already catch
torchmd-net's ``ValueError``/``AssertionError`` style failures keep working; a full
fixed-capacity neighbour list is a ``RuntimeError``; a backend that cannot run here, or cannot be
traced, is a ``RuntimeError`` / ``NotImplementedError``."""


class CheckpointError(ValueError):
    """The file is not a usable TensorNet checkpoint (wrong model, missing keys, bad shapes)."""


class InputError(ValueError):
    """The atoms handed to the model cannot give a meaningful answer (NaN positions, unknown
    elements, coincident atoms, shape/dtype/device mismatch, ...)."""


class DomainWarning(UserWarning):
    """The input lies outside what the model was trained on (elements, total charge): the
    numbers are extrapolation. Issued once per model and new set of problems."""


class OverrideError(InputError, TypeError):
    """An unknown keyword override of ``load_model`` (a ``TypeError`` too, as Python raises for
    unknown keyword arguments)."""


class NeighborListOverflowError(RuntimeError):
    """A fixed-capacity neighbour list (``StaticRadiusGraph``, ``MDStep``) found more edges than
    its buffers hold, or a position left the range its grid was planned for. ``required`` is the
    capacity that would have held the edges (0 when the plan, not the capacity, must change)."""

    def __init__(self, message: str, required: int = 0, capacity: int = 0):
        super().__init__(message)
        self.required = required
        self.capacity = capacity


# MDStep's name for it in 0.1 (kept for one release).
CapacityError = NeighborListOverflowError


class BackendUnavailable(RuntimeError):
    """A backend asked for by name cannot run on this machine (e.g. Triton without CUDA)."""


class NotTraceable(NotImplementedError):
    """torch.compile / export / CUDA-graph capture was asked of a backend whose kernels run as
    host code (the cpu backend)."""
