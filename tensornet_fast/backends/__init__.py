"""Backends, and the ONE place that picks one.

``select(request, device)`` runs once, when a model is loaded: ``backend=`` (an argument other
than "auto") beats ``TENSORNET_FAST_BACKEND`` (environment) beats ``"auto"``. An explicit request
that cannot be honoured raises; ``auto`` picks the fastest backend available for the device and
says once, with a warning, when it had to fall back. ``for_call`` is the only place a call may
run other math than the loaded backend's (training or double backward on a backend without
parameter gradients; an auto-picked backend on a model moved to another device).

Backends: ``reference`` (plain PyTorch, 3x3 matrices; the correctness baseline), ``cpu``
(compressed layout + C++ kernels), ``triton`` (fused GPU kernels). Each lives in its own
sub-package and imports only ``backends.base`` and ``backends.shared``.
"""

from __future__ import annotations

import importlib
import os

import torch

from ..errors import BackendUnavailable, InputError
from .base import FILTER_MODES, Backend, warn_once

BACKENDS = ("auto", "reference", "cpu", "triton")
ENV_VAR = "TENSORNET_FAST_BACKEND"
_CLASSES = {
    "reference": ("reference", "ReferenceBackend"),
    "cpu": ("cpu", "CpuBackend"),
    "triton": ("triton", "TritonBackend"),
}

__all__ = [
    "BACKENDS",
    "FILTER_MODES",
    "Backend",
    "BackendUnavailable",
    "available_backends",
    "backend_class",
    "for_call",
    "resolve_backend",
    "select",
    "warn_once",
]


def backend_class(name: str) -> type[Backend]:
    """The class of a named backend (its sub-package is imported on first use: importing the
    triton backend's kernels costs ~1 s)."""
    package, cls = _CLASSES[name]
    return getattr(importlib.import_module(f"{__name__}.{package}"), cls)


def _reasons() -> dict[str, str | None]:
    """backend -> None if usable here, else the reason it is not."""
    return {name: backend_class(name).unavailable() for name in _CLASSES}


def available_backends() -> list[str]:
    return [name for name, why in _reasons().items() if why is None]


def _requested_name(requested: str | None) -> str:
    # "auto" (load_model's default) also defers to the environment, so the variable can pick
    # a backend for code that never names one.
    if not isinstance(requested, str) or requested.strip().lower() in ("", "auto"):
        if requested is not None and not isinstance(requested, str):
            raise InputError(f"backend must be a name or a Backend, got {requested!r}")
        requested = os.environ.get(ENV_VAR, "auto") or "auto"
    name = requested.strip().lower()
    if name not in BACKENDS:
        raise InputError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    return name


def _auto_name(device: torch.device) -> str:
    # auto: on CPU the "cpu" backend (exact within tests/tolerances.py of torchmd-net,
    # tests/test_cpu_backend.py); on CUDA the fused Triton kernels (tests/test_triton_backend.py).
    if device.type == "cpu":
        return "cpu"
    why = backend_class("triton").unavailable()
    if why is None:
        return "triton"
    warn_once("auto-triton", f"backend 'auto' falls back to 'reference': {why}")
    return "reference"


def resolve_backend(requested: str | None = None, device: str | torch.device = "cpu") -> str:
    """The name of the backend ``select`` would give."""
    name = _requested_name(requested)
    if name == "auto":
        return _auto_name(torch.device(device))
    why = backend_class(name).unavailable()
    if why is not None:
        raise BackendUnavailable(f"backend {name!r} is not available: {why}")
    return name


def select(requested: str | Backend | None, device: str | torch.device = "cpu") -> Backend:
    """The backend for a model on ``device``: a name ("auto", "reference", "cpu", "triton"),
    None (= "auto") or a ready ``Backend`` instance (e.g. ``CpuBackend(use_extension=False)``)."""
    if isinstance(requested, Backend):
        return requested
    explicit = _requested_name(requested) != "auto"
    return backend_class(resolve_backend(requested, device))(explicit=explicit)


def for_call(
    backend: Backend,
    device: torch.device,
    *,
    parameter_gradients: bool = False,
    traced: bool = False,
) -> Backend:
    """The backend that runs one call of a model loaded with ``backend``: itself, unless the
    call needs what it cannot give -- gradients w.r.t. the weights or double backward
    (training mode, Hessians: the cpu and triton kernels give forces only), or a traced /
    captured graph (the cpu kernels are host code) -- then the reference math; or, for a
    backend "auto" picked, the backend "auto" picks for the device the tensors are on now."""
    if (parameter_gradients and not backend.parameter_gradients) or (
        traced and not backend.traceable
    ):
        return _reference()
    if backend.runs_on(device):
        return backend
    if backend.explicit:
        raise InputError(
            f"backend={backend.name!r} cannot run on {device} tensors: load the model with "
            "backend='auto' (picks one per device) or a backend for this device"
        )
    return backend_class(_auto_name(device))(explicit=False)


_REFERENCE: list[Backend] = []


def _reference() -> Backend:
    if not _REFERENCE:
        _REFERENCE.append(backend_class("reference")(explicit=False))
    return _REFERENCE[0]
