"""Readers of model files, one module per format: torchmd-net checkpoints (``torchmdnet.py``)
and matgl model folders (``matgl.py``). :func:`read_model` is the one place that decides which
reader a path goes to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import InputError
from ..config import ModelConfig


def read_model(
    path: str | os.PathLike | Mapping[str, Any],
    layout: str = "auto",
    matgl_convention: int | str = "auto",
    overrides: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
) -> tuple[ModelConfig, dict[str, torch.Tensor], str, tuple[int, ...] | None]:
    """(config, state dict in this project's names, what was read, trained elements or None)
    of a model file: a folder or ``"matgl:<name>"`` is a matgl model, anything else (a file, a
    loaded mapping) a torchmd-net checkpoint or state dict."""
    from ..elements import NUMBERS
    from . import matgl, torchmdnet

    if matgl.is_matgl_path(path):
        if layout != "auto":
            raise InputError(
                f"layout={layout!r} applies to torchmd-net checkpoints; matgl folders have one "
                "layout (interleaved, converted on load)"
            )
        config, state, source = matgl.load_matgl(path, matgl_convention, overrides)
        elements = tuple(sorted(NUMBERS[s] for s in config.element_types or ()))
        return config, state, source, elements or None
    if matgl_convention != "auto":
        raise InputError(
            f"matgl_convention={matgl_convention!r} applies to matgl model folders, not to "
            f"{path if not isinstance(path, Mapping) else 'a checkpoint mapping'}"
        )
    ckpt = torchmdnet.read_checkpoint(
        path, layout=layout, overrides=overrides, trust_pickle=trust_pickle
    )
    return ckpt.config, ckpt.state, f"torchmd-net checkpoint ({ckpt.layout} layout)", ckpt.elements
