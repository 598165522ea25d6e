"""Fake kernels of the radius graph's compiled ops (``torch.ops.tensornet_fast.radius_graph``,
``filter_pairs``, ``radius_graph_plan``, ``radius_graph_static`` and the ``*_cuda_emulated``
versions of the CUDA path; csrc/radius_graph/).

A fake kernel gives an op's output shapes, dtypes and devices without running it, so
torch.compile and torch.export can trace calls to the op. The number of edges depends on the
positions, so it is a new data-dependent size (``get_ctx().new_dynamic_size()``), as is the
plan's byte count (it grows with the number of molecules, ``batch[-1] + 1``). Registered by
``tensornet_fast._extension.ops()`` right after the extension loads; importing this module
before that fails (the ops do not exist yet).
"""

from __future__ import annotations

import torch


def _graph(pos, n_edges):
    """(edge_index [2, E], shifts [E, 3], vec [E, 3], dist [E], row_ptr [N + 1]) on pos's device,
    shifts / vec / dist in pos's dtype (the C++ kernels' allocation)."""
    return (
        pos.new_empty(2, n_edges, dtype=torch.int64),
        pos.new_empty(n_edges, 3),
        pos.new_empty(n_edges, 3),
        pos.new_empty(n_edges),
        pos.new_empty(pos.shape[0] + 1, dtype=torch.int64),
    )


def _radius_graph(pos, batch, box, cutoff, cutoff_lower, loop):
    return _graph(pos, torch.library.get_ctx().new_dynamic_size())


def _filter_pairs(pos, batch, box, edge_index, shifts, cutoff, cutoff_lower, loop):
    return _graph(pos, torch.library.get_ctx().new_dynamic_size())


def _radius_graph_plan(pos, batch, box, cutoff, cutoff_lower, max_abs):
    # host work: the plan is a uint8 CPU tensor whatever pos's device
    n_bytes = torch.library.get_ctx().new_dynamic_size()
    return torch.empty(n_bytes, dtype=torch.uint8, device="cpu")


def _radius_graph_static(
    pos, batch, plan, plan_dev, loop, edge_index, shifts, vec, dist, row_ptr, status
):
    return None  # writes into its Tensor(a!) buffers only


for _name, _fake in (
    ("radius_graph", _radius_graph),
    ("filter_pairs", _filter_pairs),
    ("radius_graph_plan", _radius_graph_plan),
    ("radius_graph_static", _radius_graph_static),
    # the CUDA path compiled for the host (tests): the same schemas and outputs
    ("radius_graph_cuda_emulated", _radius_graph),
    ("filter_pairs_cuda_emulated", _filter_pairs),
    ("radius_graph_static_cuda_emulated", _radius_graph_static),
):
    torch.library.register_fake(f"tensornet_fast::{_name}", _fake)
