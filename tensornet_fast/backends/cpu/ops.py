"""The cpu backend's access to its compiled kernels (csrc/, ``torch.ops.tensornet_fast.cpu_*``),
the activation ids they take, and the per-stage profiler ranges."""

from __future__ import annotations

import contextlib

import torch
from torch.profiler import record_function

from ... import _extension

# Activation ids of the compiled kernels (the row-wise stacks take all of them,
# cpu_bias_act_jvp_ the SiLU and sigmoid ones).
ACTIVATION_IDS = {"silu": 0, "swish": 0, "tanh": 1, "sigmoid": 2, "ssp": 3, "mish": 4}

_NO_STAGE = contextlib.nullcontext()


def compiled_ops():
    """torch.ops.tensornet_fast with the compiled cpu kernels, or None without the extension."""
    ops = _extension.ops()
    return ops if ops is not None and hasattr(ops, "cpu_layer_fwd") else None


def stage(name: str):
    """A profiler range named ``tnf.cpu.<name>`` (bench/bench_cpu_backend.py's per-stage
    profile reads them) while a profiler runs; otherwise nothing: entering and leaving a
    record_function costs ~8 us even with no profiler, ~0.1 ms per call of the fused path."""
    if torch._C._autograd._profiler_enabled():
        return record_function("tnf.cpu." + name)
    return _NO_STAGE
