"""The one place that picks a compute backend.

``backend=`` (an argument other than "auto") beats ``TENSORNET_FAST_BACKEND`` (environment)
beats ``"auto"``.
An explicit request that cannot be honoured raises; ``auto`` picks the fastest available and
says once, with a warning, when it had to fall back.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

BACKENDS = ("auto", "reference", "cpu", "triton")
ENV_VAR = "TENSORNET_FAST_BACKEND"
_warned: set[str] = set()


class BackendUnavailable(RuntimeError):
    pass


def _triton_status() -> str | None:
    # find_spec, not import: importing Triton costs ~1 s and only the triton backend needs it
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'tensornet-fast[triton]')"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run its kernels on CPU, slowly)"
    return None


def _available() -> dict[str, str | None]:
    """backend -> None if usable here, else the reason it is not."""
    return {"reference": None, "cpu": None, "triton": _triton_status()}


def available_backends() -> list[str]:
    return [name for name, why in _available().items() if why is None]


def resolve_backend(requested: str | None = None, device: str = "cpu") -> str:
    # "auto" (load_model's default) also defers to the environment, so the variable can pick
    # a backend for code that never names one.
    if requested in (None, "") or requested.strip().lower() == "auto":
        name = os.environ.get(ENV_VAR, "auto") or "auto"
    else:
        name = requested
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    status = _available()
    if name != "auto":
        why = status.get(name)
        if why is not None:
            raise BackendUnavailable(f"backend {name!r} is not available: {why}")
        return name
    # auto: on CPU the "cpu" backend (exact within tests/tolerances.py of torchmd-net,
    # tests/test_cpu_backend.py); on CUDA the fused Triton kernels (tests/test_triton_backend.py).
    if str(device).startswith("cpu"):
        return "cpu"
    if status["triton"] is None:
        return "triton"
    warn_once("auto-triton", f"backend 'auto' falls back to 'reference': {status['triton']}")
    return "reference"


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)
