"""State derived from a model's weights (filter tables, packed GEMM weights, element-pair
tables, padded kernel weights) follows the weights: every entry is keyed on the storage address
and version counter of every parameter and buffer, and rebuilt on the first call after
``load_state_dict``, an in-place edit (``with torch.no_grad(): p.mul_(2)``, ``p.data.mul_(2)``,
an optimizer step), ``.to(...)`` (dtype or device), a replaced Parameter / buffer or a replaced
sub-module. Reading the key costs ~20-45 us per call (57 tensors of the bundled model), against
16-30 ms for a 64-molecule call.

Three ways a (pointer, version) key could miss a change, and what closes each:

* ``p.data`` is a tensor with a FRESH version counter in PyTorch: ``p.data.mul_(2)`` leaves
  ``p._version`` unchanged. The model's parameters are :class:`TrackedParameter` (a Parameter
  whose ``.data`` is ``detach()``, which shares the version counter), so such edits bump the
  version like any other in-place edit. Parameters put in later (a replaced Parameter, a model
  rebuilt by pickle) are converted when the key is next read.
* A freed storage's address can be reused: ``.to(float64)``, an edit, ``.to(float32)`` can put
  new weights at the old addresses with version 0. Each cache entry keeps the storages its key
  names alive (``keep``), so no other tensor can sit at those addresses while the entry exists.
* Buffers are plain tensors (``b.data`` has its own counter too): the few small buffers that
  derived state reads (the radial basis' ``means`` / ``betas`` / ``offset`` / ``coeff``) are
  compared by value (``_VALUE_CHECKED``: two vectors of num_rbf numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

_TENSOR_DATA = torch._C.TensorBase.data  # the C-level ``.data`` descriptor


class TrackedParameter(nn.Parameter):
    """An ``nn.Parameter`` whose ``.data`` shares its version counter (``p.data`` is
    ``p.detach()``), so ``p.data.mul_(2)`` is seen by the derived-state keys (and by autograd's
    saved-tensor checks, which then raise instead of differentiating stale values). Assigning
    ``p.data = t`` works as for any Parameter."""

    @property
    def data(self) -> Tensor:  # type: ignore[override]
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        _TENSOR_DATA.__set__(self, value)


# Buffers whose VALUES are part of the key (small, read by the filter tables).
_VALUE_CHECKED = ("means", "betas", "offset", "coeff")


def _list_slots(model: nn.Module):
    """((dict, name) of every parameter and buffer, (parent dict, name, child) of every
    sub-module, [(dict, name)] of the value-checked buffers)."""
    slots, modules, valued = [], [], []
    stack = [model]
    while stack:
        mod = stack.pop()
        slots.extend((mod._parameters, name) for name in mod._parameters)
        slots.extend((mod._buffers, name) for name in mod._buffers)
        valued.extend((mod._buffers, name) for name in mod._buffers if name in _VALUE_CHECKED)
        for name, child in mod._modules.items():
            modules.append((mod._modules, name, child))
            if child is not None:
                stack.append(child)
    return slots, modules, valued


def _slots(model: nn.Module):
    """The slots, listed once per model (walking the module tree each call took ~90 us of the
    ~135 us per key, 57 tensors) and listed again when a sub-module was replaced."""
    cached = model.__dict__.get("_weight_slots")
    if cached is not None and all(d.get(name) is child for d, name, child in cached[1]):
        return cached
    cached = _list_slots(model)
    model.__dict__["_weight_slots"] = cached
    return cached


def weights_key(model: nn.Module) -> tuple:
    """(data pointer, version) of every parameter and buffer, and the values of the small
    buffers in ``_VALUE_CHECKED``; parameters are made :class:`TrackedParameter` on the way."""
    slots, _, valued = _slots(model)
    out = []
    for tensors, name in slots:
        t = tensors.get(name)
        if t is None:
            out.append(None)
            continue
        if type(t) is nn.Parameter:  # put in after load: track its .data edits from now on
            t.__class__ = TrackedParameter
        out.append((t.data_ptr(), t._version))
    for tensors, name in valued:
        t = tensors.get(name)
        if t is not None:
            out.append(tuple(t.detach().reshape(-1).tolist()))
    return tuple(out)


def weight_tensors(model: nn.Module) -> list[Tensor]:
    """Detached views of every parameter and buffer: held next to a key, they keep the storages
    it names alive, so their addresses cannot be reused by other tensors meanwhile."""
    slots, _, _ = _slots(model)
    return [t.detach() for d, name in slots if (t := d.get(name)) is not None]


def track_parameters(model: nn.Module) -> None:
    """Make every parameter of ``model`` a :class:`TrackedParameter` (at load time)."""
    for p in model.parameters():
        if type(p) is nn.Parameter:
            p.__class__ = TrackedParameter


def tracing() -> bool:
    """Whether a torch.compile (Dynamo) or make_fx / torch.export trace is running."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return torch.compiler.is_compiling() or get_proxy_mode() is not None


def derived(model: nn.Module, name: str, build: Callable[[], Any], key: tuple | None = None):
    """``build()``'s value, cached on ``model`` under ``name`` until the weights change.
    ``key``: the current ``weights_key(model)`` when the caller already has it."""
    cache = model.__dict__.setdefault("_derived_state", {})
    if tracing() and name in cache:
        # Inside a torch.compile or make_fx trace the state was built before tracing (the
        # caller prepares the backend and re-traces when the weights change); data pointers
        # and the value-checked buffers are not traceable (comparing traced values guards on
        # data: GuardOnDataDependentSymNode).
        return cache[name][1]
    key = weights_key(model) if key is None else key
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    keep = model.__dict__.setdefault("_derived_keep", {})
    keep[name] = weight_tensors(model)
    value = build()
    cache[name] = (key, value)
    return value
