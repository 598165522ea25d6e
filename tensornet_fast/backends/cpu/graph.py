"""The neighbour list as the cpu backend's edge passes need it: detached, receiver-sorted CSR,
unit vectors, and each edge's place on the filter tables' grid."""

from __future__ import annotations

import torch
from torch import Tensor

from ..shared.tables import Spline


class Graph:
    """The neighbour list as the edge passes need it (all detached, receiver-sorted)."""

    def __init__(self, nl, n_atoms: int, ops=None):
        self.i, self.j = nl.edge_index[0].contiguous(), nl.edge_index[1].contiguous()
        self.row_ptr = nl.row_ptr.contiguous()
        self.n = n_atoms
        self.e = self.i.shape[0]
        self.d = nl.edge_dist.detach().contiguous()  # [E]
        # [E], 0 on self-loops. A self-loop is the one edge with d = 0 (coincident atoms are
        # rejected before): an atom's own periodic image (i == j, lattice shift) is a real edge.
        real = self.d != 0
        self.safe_d = torch.where(real, self.d, 1.0)
        # a self-loop's vector is exactly 0 (pos[i] - pos[i]), so its rhat is 0 / 1 = 0 with no
        # mask (two ops fewer per call)
        self.rhat = (nl.edge_vec.detach() / self.safe_d[:, None]).contiguous()
        self._located: dict = {}  # spline grid -> (interval, local coordinate) per edge
        self._ops = ops  # the compiled kernels, or None

    def spline_coordinates(self, spline: Spline) -> tuple[Tensor, Tensor]:
        """Interval [E] (-1: zero filter) and local coordinate [E] of every edge on the spline's
        grid. All filters of a model share the grid (lo, h, n), so this is computed once per
        graph, not twice (forward, backward) per filter."""
        key = (spline.lo, spline.h, spline.n, spline.zero_below)
        if key not in self._located:
            if self._ops is not None:  # one compiled pass, same float64 arithmetic and bits
                k, s = self._ops.cpu_spline_locate(self.d, *key[:3], spline.zero_below)
            else:
                k, s = spline.locate(self.d)
                if spline.zero_below:
                    k = torch.where(self.d >= spline.lo, k, torch.full_like(k, -1))
            self._located[key] = (k.contiguous(), s.contiguous())
        return self._located[key]

    def edge_vec_grad(self, gd: Tensor, grhat: Tensor | None) -> Tensor:
        """dE/d(edge_vec) [E, 3] from dE/dd [E] and dE/d(rhat) [E, 3]; 0 on self-loops."""
        g = gd[:, None] * self.rhat
        if grhat is not None:
            radial = (grhat * self.rhat).sum(1, keepdim=True)
            # 0 on self-loops; made here, not per call: the compiled path never passes grhat
            not_self = (self.d != 0).to(self.d.dtype)[:, None]
            g = g + (grhat - radial * self.rhat) / self.safe_d[:, None] * not_self
        return g
