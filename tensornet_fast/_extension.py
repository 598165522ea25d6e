"""The compiled extension ``tensornet_fast._C`` (csrc/), loaded once for every user of its ops.

``ops()`` is ``torch.ops.tensornet_fast`` when the extension imports, else None: callers then
take their plain-PyTorch paths (same numbers, slower). ``TENSORNET_FAST_DISABLE_EXTENSION=1``
(read once per process) makes it None on purpose, to run or test those paths. Loading the
extension also registers the ops' fake kernels (backends/cpu/fakes.py, neighbors/fakes.py)."""

from __future__ import annotations

import os
import warnings

import torch

_STATE: dict = {}


def ops():
    """``torch.ops.tensornet_fast`` with the compiled operators, or None."""
    if "ops" not in _STATE:
        _STATE["ops"] = None
        _STATE["cuda"] = False
        if os.environ.get("TENSORNET_FAST_DISABLE_EXTENSION", "0") != "1":
            try:
                from . import _C  # importing registers torch.ops.tensornet_fast.*
            except (ImportError, OSError) as exc:
                _STATE["error"] = str(exc)
            else:
                _register_fakes()
                _STATE["ops"] = torch.ops.tensornet_fast
                _STATE["cuda"] = bool(getattr(_C, "with_cuda", False))
    return _STATE["ops"]


def _register_fakes() -> None:
    """Fake kernels of every op (torch.compile / torch.export tracing), once the ops exist. An
    extension built from older sources (an op missing, or one without a CPU kernel of its own)
    rejects some: its ops still run eagerly, so this warns instead of failing."""
    try:
        from .backends.cpu import fakes as _cpu_fakes  # noqa: F401
        from .neighbors import fakes as _neighbor_fakes  # noqa: F401
    except RuntimeError as exc:
        _STATE["fakes_error"] = str(exc)
        warnings.warn(
            f"tensornet_fast._C looks older than the Python package ({exc}); its ops run, but "
            "torch.compile / torch.export cannot trace them: rebuild it (python setup.py "
            "build_ext --inplace)",
            stacklevel=3,
        )


def with_cuda() -> bool:
    """True when the extension was built with its CUDA kernels."""
    ops()
    return _STATE["cuda"]
