"""Neighbour lists: the radius graph (``search.py``: compiled cell list, or the brute force
of ``brute_force.py``), the fixed-capacity graph for MD loops and CUDA graphs (``static.py``),
the Verlet skin rule and list (``verlet.py``), and the ``NeighborList`` they all return
(``graph.py``)."""

from .brute_force import radius_graph_reference
from .graph import (
    NeighborList,
    box_per_molecule,
    reject_coincident,
    safe_norm,
    validate_graph_inputs,
)
from .search import compiled_available, radius_graph, radius_graph_full
from .static import StaticNeighborList, StaticRadiusGraph, radius_graph_static
from .verlet import SkinRule, VerletList

__all__ = [
    "NeighborList",
    "SkinRule",
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
