"""The pieces of the matgl reader that need no matgl (the parity tests with matgl itself are in
test_matgl.py): the smooth spherical Bessel basis against its defining recursion evaluated
directly, its written-out slope against autograd, the element table, folder errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tensornet_fast as tnf
from tensornet_fast.backends.shared.radial import radial_basis_jvp, smooth_bessel_rbf
from tensornet_fast.errors import CheckpointError, InputError
from tensornet_fast.model.elements import element_rows


def _direct_basis(d: torch.Tensor, k: int, rc: float) -> torch.Tensor:
    """The smooth basis straight from its definition (Kocer et al. 2019; matgl's
    SphericalBessel(use_smooth=True)), one function at a time, float64."""

    def sinc(x):
        return torch.sin(x) / x

    f = []
    for n in range(k):
        a = (-1) ** n * math.sqrt(2) * math.pi / rc**1.5 * (n + 1) * (n + 2)
        a /= math.sqrt((n + 1) ** 2 + (n + 2) ** 2)
        f.append(a * (sinc(d * (n + 1) * math.pi / rc) + sinc(d * (n + 2) * math.pi / rc)))
    g, dprev = [f[0]], 1.0
    for n in range(1, k):
        e = n**2 * (n + 2) ** 2 / (4 * (n + 1) ** 4 + 1)
        dn = 1 - e / dprev
        g.append((f[n] + math.sqrt(e / dprev) * g[-1]) / math.sqrt(dn))
        dprev = dn
    return torch.stack(g, 1)


@pytest.mark.parametrize("k,rc", [(3, 5.0), (4, 6.0), (8, 4.5)])
def test_smooth_bessel_basis(k, rc):
    d = torch.linspace(0.05, rc, 401, dtype=torch.float64)
    ours = smooth_bessel_rbf(d, k, rc)
    ref = _direct_basis(d, k, rc)
    assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-13
    # smooth: every function and its slope vanish at the cutoff
    end = torch.tensor([rc], dtype=torch.float64, requires_grad=True)
    val = smooth_bessel_rbf(end, k, rc)
    assert float(val.abs().max()) < 1e-12
    (slope,) = torch.autograd.grad(val.sum(), end)
    assert abs(float(slope)) < 1e-10


def test_smooth_bessel_slope():
    """radial_basis_jvp's written-out slope (the cpu backend's exact filters) vs autograd,
    including distances where the sinc series takes over (x < 0.01) and d = 0."""
    from tensornet_fast.model.config import ModelConfig

    config = ModelConfig(rbf_type="smooth_bessel", num_rbf=3, cutoff_upper=5.0, precision=64)
    d = torch.cat(
        [torch.tensor([0.0, 1e-4, 0.0159, 0.0160]), torch.linspace(0.1, 5.0, 50)]
    ).double()
    d.requires_grad_(True)
    e, de, _, _ = radial_basis_jvp(None, config, d.detach())
    ref = smooth_bessel_rbf(d, 3, 5.0)
    slopes = torch.stack(
        [torch.autograd.grad(ref[:, n].sum(), d, retain_graph=True)[0] for n in range(3)], 1
    )
    assert float((e - ref.detach()).abs().max()) < 1e-14
    assert float((de - slopes).abs().max()) < 1e-12


def test_element_rows():
    rows = element_rows(("O", "Na", "H"), torch.tensor([1, 8, 11, 8]))
    assert rows.tolist() == [2, 0, 1, 0]
    with pytest.raises(InputError, match="Cl"):
        element_rows(("O", "Na", "H"), torch.tensor([1, 17]))
    with pytest.raises(InputError, match="Z=0"):
        element_rows(("O", "Na", "H"), torch.tensor([0]))


def test_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="model.json, state.pt"):
        tnf.load_model(str(tmp_path))
    (tmp_path / "model.json").write_text(
        json.dumps({"@class": "Potential", "kwargs": {"model": {"@class": "CHGNet"}}})
    )
    torch.save({}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="not a TensorNet model.*CHGNet"):
        tnf.load_model(str(tmp_path))
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        tnf.load_model(str(tmp_path))
