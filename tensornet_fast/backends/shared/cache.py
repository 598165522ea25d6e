"""State derived from a model's weights (filter tables, packed GEMM weights, element-pair
tables, padded kernel weights) follows the weights: every entry is keyed on the identity and
version counter of every parameter and buffer, plus dtype and device, and rebuilt on the first
call after ``load_state_dict``, an in-place edit (``p.data.mul_``, ``with torch.no_grad(): p +=``),
``.to(...)`` or a replaced tensor. Reading the key costs ~20-45 us per call (57 tensors of the
bundled model), against 16-30 ms for a 64-molecule call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def weights_key(model: nn.Module) -> tuple:
    """(data pointer, version) of every parameter and buffer. The (dict, name) slots are listed
    once per model (walking the module tree each call took ~90 us of the ~135 us per key, 57
    tensors); reading each slot every time still sees a replaced Parameter or buffer."""
    slots = model.__dict__.get("_weight_slots")
    if slots is None:
        slots = []
        stack = [model]
        while stack:
            mod = stack.pop()
            slots.extend((mod._parameters, name) for name in mod._parameters)
            slots.extend((mod._buffers, name) for name in mod._buffers)
            stack.extend(m for m in mod._modules.values() if m is not None)
        model.__dict__["_weight_slots"] = slots
    out = []
    for tensors, name in slots:
        t = tensors.get(name)
        if t is not None:
            out.append((t.data_ptr(), t._version))
    return tuple(out)


def derived(model: nn.Module, name: str, build: Callable[[], Any], key: tuple | None = None):
    """``build()``'s value, cached on ``model`` under ``name`` until the weights change.
    ``key``: the current ``weights_key(model)`` when the caller already has it."""
    cache = model.__dict__.setdefault("_derived_state", {})
    if torch.compiler.is_compiling() and name in cache:
        # Inside a torch.compile trace the state was built before tracing (the caller prepares
        # the backend and re-traces when the weights change); data pointers are not traceable.
        return cache[name][1]
    key = weights_key(model) if key is None else key
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = build()
    cache[name] = (key, value)
    return value
