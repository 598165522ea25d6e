"""Neighbour lists: the radius graph (compiled cell list or brute force), the static-capacity
graph for MD loops and CUDA graphs, and the Verlet-skin list."""

from .radius_graph import (
    NeighborList,
    StaticNeighborList,
    StaticRadiusGraph,
    VerletList,
    box_per_molecule,
    compiled_available,
    radius_graph,
    radius_graph_full,
    radius_graph_reference,
    radius_graph_static,
    reject_coincident,
    safe_norm,
    validate_graph_inputs,
)

__all__ = [
    "NeighborList",
    "StaticNeighborList",
    "StaticRadiusGraph",
    "VerletList",
    "box_per_molecule",
    "compiled_available",
    "radius_graph",
    "radius_graph_full",
    "radius_graph_reference",
    "radius_graph_static",
    "reject_coincident",
    "safe_norm",
    "validate_graph_inputs",
]
