"""The tabulated filters (``filter_mode="tabulated"``), ONE mode for every backend: each radial
filter (the embedding's projection, each layer's MLP) becomes a quintic Hermite spline in d on
TABLE_INTERVALS intervals of [cutoff_lower, cutoff_upper], built in float64 from the values and
first and second d-derivatives at the nodes (C^2; error ~ h^6 in values, h^5 in derivatives).
Forces use the spline's own derivative, so the tabulated energy is conserved exactly.

Every table carries its measured error (``TableCheck``) against the float64 filter, next to the
float32 rounding of the exact filter at the same points: ``filter_mode="auto"`` uses the tables
only where they add no error above that rounding. Tables are derived from the weights and
rebuilt when the weights change (``shared.cache``).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .cache import derived
from .radial import filter_fns

# Quintic Hermite splines (values, first and second derivatives at the nodes) on 512 intervals.
# Filters of the benchmark checkpoint (F=128, r_c = 5), float64, max error relative to max|f| and
# max|f'|: values <= 2e-8 / derivatives <= 8e-7 below 0.6 A, <= 1e-9 / 6e-8 beyond; a cubic on
# 2048 intervals (the triton backend's tables until 0.2): 4e-8 / 5e-6 and 5e-9 / 9e-7. The
# quintic table is 4.7 MB per filter (F=128) instead of 12.6 MB and stays in a CPU's L3 cache:
# the message passes read 9 KB of it per edge (cubic: 6 KB).
TABLE_DEGREE = 5
TABLE_INTERVALS = 512


def node_derivatives(fn, d: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """fn(d), dfn/dd and (second: d2fn/dd2) by nested forward-mode AD, for spline nodes
    (a few thousand distances at most, one block)."""
    one = torch.ones_like(d)

    def first(x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(fn, (x,), (one,))

    # Grad mode on: under no_grad, F.silu's nested forward AD goes through aten::silu_backward,
    # which has no forward derivative (NotImplementedError, torch 2.13).
    with torch.enable_grad():
        if not second:
            y, d1 = first(d)
            return y.detach(), d1.detach(), None
        (y, d1), (_, d2) = torch.func.jvp(first, (d,), (one,))
    return y.detach(), d1.detach(), d2.detach()


class Spline:
    """Hermite spline of a vector function of d on [lo, hi] with power-form coefficients per
    interval [n, degree + 1, C] (p(s) = sum_k coef[:, k] s^k, s in [0, 1)). ``degree`` 3: cubic,
    values and first derivatives exact at the nodes, C^1, error <= h^4/384 max|f''''|; 5:
    quintic, also second derivatives, C^2, error O(h^6). Zero below ``lo`` when lo > 0 (the
    cosine cutoff vanishes there)."""

    def __init__(
        self,
        fn,
        lo: float,
        hi: float,
        intervals: int,
        dtype: torch.dtype,
        degree: int = TABLE_DEGREE,
    ):
        if degree not in (3, 5):
            raise ValueError(f"spline degree must be 3 or 5, got {degree}")
        self.lo, self.hi, self.n, self.degree = float(lo), float(hi), int(intervals), degree
        self.h = (self.hi - self.lo) / self.n
        nodes = torch.linspace(self.lo, self.hi, self.n + 1, dtype=torch.float64)
        # The end nodes' derivatives as one-sided limits from inside [lo, hi]: the cutoff makes
        # f'' jump to 0 at r_c (and at r_l > 0), and a quintic fitted to the outside value had a
        # derivative error of 1e-4 (relative) in its last interval instead of 5e-8.
        inf = torch.tensor(math.inf, dtype=torch.float64)
        nodes[-1] = torch.nextafter(nodes[-1], -inf)
        if self.lo > 0:
            nodes[0] = torch.nextafter(nodes[0], inf)
        y, d1, d2 = node_derivatives(fn, nodes, degree == 5)  # [n + 1, C] each, float64
        y0, y1, m0, m1 = y[:-1], y[1:], d1[:-1] * self.h, d1[1:] * self.h
        if degree == 3:
            coef = (y0, m0, 3 * (y1 - y0) - 2 * m0 - m1, 2 * (y0 - y1) + m0 + m1)
        else:
            c0, c1 = d2[:-1] * self.h**2, d2[1:] * self.h**2
            # a3..a5 from p(1) = y1, p'(1) = m1, p''(1) = c1 given a0 = y0, a1 = m0, a2 = c0 / 2
            r0, r1, r2 = y1 - y0 - m0 - c0 / 2, m1 - m0 - c0, c1 - c0
            coef = (
                y0,
                m0,
                c0 / 2,
                10 * r0 - 4 * r1 + r2 / 2,
                -15 * r0 + 7 * r1 - r2,
                6 * r0 - 3 * r1 + r2 / 2,
            )
        self.coef = torch.stack(coef, 1).to(dtype).contiguous()  # [n, degree + 1, C]
        self.zero_below = self.lo > 0

    def locate(self, d: Tensor) -> tuple[Tensor, Tensor]:
        """Interval index [E] (int64) and local coordinate s [E] (model dtype); computed in
        float64 so s is not limited by float32 rounding of d / h at large interval indices."""
        t = (d.double() - self.lo) / self.h
        k = t.floor().clamp(0, self.n - 1)
        return k.long(), (t - k).clamp(0.0, 1.0).to(d.dtype)

    def evaluate(self, d: Tensor, deriv: bool) -> tuple[Tensor, Tensor | None]:
        k, s = self.locate(d)
        c = self.coef[k]  # [E, degree + 1, C]
        s1 = s[:, None]
        val = c[:, self.degree]
        for p in range(self.degree - 1, -1, -1):  # Horner
            val = val * s1 + c[:, p]
        der = None
        if deriv:
            der = self.degree * c[:, self.degree]
            for p in range(self.degree - 1, 0, -1):
                der = der * s1 + p * c[:, p]
            der = der / self.h
        if self.zero_below:
            keep = (d >= self.lo).to(val.dtype)[:, None]
            val = val * keep
            der = der * keep if deriv else None
        return val, der


class TableCheck(NamedTuple):
    """A spline's measured error at CHECK_POINTS of every interval (where the Hermite error
    peaks), against the float64 filter: max |error| relative to max |f| (values) and max |f'|
    (derivatives, i.e. forces). ``fp32_*``: the same for the exact filter MLP evaluated in
    float32, the rounding that ``exact`` mode already makes in a float32 model."""

    value_error: float
    derivative_error: float
    fp32_value_error: float
    fp32_derivative_error: float

    @property
    def within_fp32_rounding(self) -> bool:
        """The table adds no error above float32 rounding of the exact filter (floor: 4 ulps)."""
        floor = 4 * torch.finfo(torch.float32).eps
        return self.value_error <= max(
            self.fp32_value_error, floor
        ) and self.derivative_error <= max(self.fp32_derivative_error, floor)


# Local coordinates of the check points: the quintic's value error ~ s^3 (1 - s)^3 peaks at
# s = 0.5, its derivative error at s = 0.5 -+ 0.22 (and vanishes at 0.5 to leading order).
CHECK_POINTS = (0.25, 0.5, 0.75)


def check_spline(spline: Spline, fn64, fn32) -> TableCheck:
    """Measure ``spline`` (its stored coefficients, evaluated in float64) against the filter
    ``fn64`` (float64 weights) and ``fn32`` (the same weights in float32) at CHECK_POINTS."""
    k = torch.arange(spline.n, dtype=torch.float64)[:, None]
    s = torch.tensor(CHECK_POINTS, dtype=torch.float64)
    d = (spline.lo + (k + s) * spline.h).flatten()  # [3n], strictly inside (lo, hi)
    exact, exact_d, _ = node_derivatives(fn64, d, False)
    f32, f32_d, _ = node_derivatives(fn32, d.float(), False)
    as64 = copy.copy(spline)
    as64.coef = spline.coef.double()
    val, der = as64.evaluate(d, True)

    def rel(a: Tensor, ref: Tensor) -> float:
        return float((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))

    return TableCheck(rel(val, exact), rel(der, exact_d), rel(f32, exact), rel(f32_d, exact_d))


def build_splines(
    model, intervals: int = TABLE_INTERVALS, degree: int = TABLE_DEGREE
) -> list[Spline]:
    """One spline per radial filter (embedding first, then each layer), built on the CPU in
    float64 from a float64 copy of the weights and stored in the model's dtype; each carries its
    measured error (``spline.check``, a TableCheck)."""
    config = model.config
    lo, hi = config.cutoff_lower, config.cutoff_upper
    splines = []
    rep64, rep32 = (
        copy.deepcopy(model.representation_model).to("cpu", dtype)
        for dtype in (torch.float64, torch.float32)
    )
    for rep in (rep64, rep32):
        rep.requires_grad_(False)
    for fn64, fn32 in zip(filter_fns(rep64, config), filter_fns(rep32, config)):
        spline = Spline(fn64, lo, hi, intervals, model.dtype, degree)
        spline.check = check_spline(spline, fn64, fn32)
        splines.append(spline)
    return splines


def filter_tables(model, key: tuple | None = None) -> list[Spline]:
    """The model's tables (``build_splines``), built once per state of its weights: rebuilt
    after ``load_state_dict``, an in-place edit or ``.to(...)``. Coefficients live on the CPU;
    a backend on another device keeps its own copy, derived the same way. ``key``: the current
    ``cache.weights_key(model)`` when the caller already has it."""
    return derived(model, "filter_tables", lambda: build_splines(model), key)
