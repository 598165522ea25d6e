"""The one table of numerical tolerances (docs/spec.md "Tolerances").

energy: relative to max |E| of the reference; forces: relative to max |F| of the reference.
Exact modes must meet these against torchmd-net / the float64 reference. Fast modes (tabulated
filters, TF32, bf16) are held to FAST_MODE_FACTOR x the measured error of the exact fp32 path.
"""

from __future__ import annotations

import torch

TOLERANCES = {
    torch.float32: {"energy": 2e-6, "forces": 1e-5, "positions": 1e-6},
    torch.float64: {"energy": 1e-10, "forces": 1e-10, "positions": 1e-12},
}
FAST_MODE_FACTOR = 2.0
# Below ~4 float32 ulps a measured error is rounding noise, not a property of the mode: the exact
# fp32 path's relative energy error on 8 random-weight models ranged 5.6e-8 .. 1.1e-6 and moved
# by 2-3x when only an activation's exp changed rounding (cpu_bias_act_jvp_). A fast mode's error
# is compared against max(exact fp32 error, FP32_NOISE_FLOOR).
FP32_NOISE_FLOOR = 4 * torch.finfo(torch.float32).eps  # 4.8e-7
# Two correct float32 implementations of the same math (different operation order) differ in
# their error against float64 by a few x where the input is ill-conditioned (random weights
# amplify rounding): measured 2.6x on forces (tensornet_fast's reference path 4.2e-5 vs matgl
# 4.1.2's own 1.6e-5; random-weight matgl model, a chlorine-containing molecule). An exact float32
# path that misses the table is accepted within ROUNDING_SPREAD x an independent
# implementation's float32 error on the same input (an O(1) misread weight still fails).
ROUNDING_SPREAD = 4.0


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (compared in float64)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def assert_close(actual, expected, dtype: torch.dtype, kind: str, what: str = "") -> float:
    """Assert parity within the table's tolerance; returns the measured relative error."""
    err = relative_error(actual, expected)
    tol = TOLERANCES[dtype][kind]
    assert err <= tol, f"{what} {kind} relative error {err:.3e} > {tol:.0e} ({dtype})"
    return err
