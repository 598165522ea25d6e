"""Property-based check (hypothesis): random valid systems -- molecules, batches, skewed and
tiny periodic cells, random elements -- give the same energies and forces on the cpu backend as
on the reference backend, in float64 with exact filters (1e-9 relative), or a clear InputError
for inputs over a budget. Never a NaN, a crash or a hang."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from oracle import make_small_checkpoint  # noqa: E402

import tensornet_fast as tnf  # noqa: E402
from tensornet_fast import InputError  # noqa: E402

RTOL = 1e-9  # exact filters, float64: both backends compute the same math


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = make_small_checkpoint(tmp_path_factory.mktemp("prop") / "m.ckpt", seed=9, precision=64)
    cpu = tnf.load_model(path, backend="cpu", filter_mode="exact")
    ref = tnf.load_model(path, backend="reference")
    return cpu, ref


@st.composite
def systems(draw):
    """(z, pos, batch, box): 1-3 molecules of 1-7 atoms (elements 1..19), at least 0.6 A
    apart, open or periodic (cubic, skewed or tiny cells, down to 1 A spacing)."""
    n_mol = draw(st.integers(1, 3))
    periodic = draw(st.booleans())
    counts = [draw(st.integers(1, 7)) for _ in range(n_mol)]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    z = torch.randint(1, 20, (sum(counts),), generator=gen)
    pos, batch, boxes = [], [], []
    for m, n in enumerate(counts):
        side = draw(st.floats(1.0, 9.0)) if periodic else 4.0
        shear = draw(st.floats(-2.0, 2.0)) if periodic else 0.0
        cell = torch.tensor(
            [[side, 0.0, 0.0], [shear * side, side, 0.0], [0.3 * shear, 0.2, side]],
            dtype=torch.float64,
        )
        frac = torch.rand(n, 3, generator=gen, dtype=torch.float64)
        p = frac @ cell if periodic else frac * side
        # shift whole molecules around (positions outside the cell are wrapped by the search)
        p = p + draw(st.floats(-20.0, 20.0))
        pos.append(p)
        batch.append(torch.full((n,), m))
        boxes.append(cell)
    pos, batch = torch.cat(pos), torch.cat(batch)
    return z, pos, batch, torch.stack(boxes) if periodic else None


def _min_distance(pos, batch, box) -> float:
    """Closest pair (images included) within a molecule; inf for single atoms."""
    best = math.inf
    for m in batch.unique().tolist():
        p = pos[batch == m]
        shifts = [torch.zeros(3, dtype=torch.float64)]
        if box is not None:
            r = torch.arange(-1, 2, dtype=torch.float64)
            shifts = torch.cartesian_prod(r, r, r) @ box[m]
        for s in shifts:
            d = (p[:, None] - p[None] + s).norm(dim=-1)
            if float(s.abs().sum()) == 0:
                d = d + torch.eye(p.shape[0], dtype=torch.float64) * 1e9
            best = min(best, float(d.min()) if d.numel() else math.inf)
    return best


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
@given(systems())
def test_cpu_matches_reference(models, system):
    cpu, ref = models
    z, pos, batch, box = system
    hypothesis.assume(_min_distance(pos, batch, box) > 0.6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            e_ref, f_ref = ref(z, pos, batch, box)
        except InputError as exc:  # over a budget: the cpu backend must refuse it alike
            with pytest.raises(InputError, match=str(exc)[:40].replace("(", r"\(")):
                cpu(z, pos, batch, box)
            return
        e, f = cpu(z, pos, batch, box)
    assert torch.isfinite(e).all() and torch.isfinite(f).all()
    scale_e = float(e_ref.abs().max()) or 1.0
    # forces that cancel by symmetry (a lone or centred atom) are rounding noise, ~1e-14: the
    # scale has a floor of 1e-3 (model units), i.e. 1e-12 absolute there
    scale_f = max(float(f_ref.abs().max()), 1e-3)
    assert float((e - e_ref).abs().max()) <= RTOL * scale_e
    assert float((f - f_ref).abs().max()) <= RTOL * scale_f
