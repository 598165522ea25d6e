"""The committed fixtures of the GPU check (tests/data/gpu_fixtures, made by
tests/data/make_gpu_fixtures.py) still match torchmd-net 3.1 and the float64 reference backend
recomputed here on CPU: the GPU host compares the Triton backend with these numbers, so a stale
fixture would fail (or pass) the wrong thing there."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from paths import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "data"))  # make_gpu_fixtures.py
import make_gpu_fixtures as fx  # noqa: E402

pytest.importorskip("torchmdnet")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["molecules", "water_box"])
def test_fixture_matches_torchmdnet_and_reference(name):
    stored = fx.load(name)
    system = {k: stored[k] for k in ("z", "pos", "batch", "box") if k in stored}
    fresh = fx.outputs(fx.CKPT, system)
    # every output the GPU check reads is there, with its shape
    n = len(stored["z"])
    keys = {"energy_32", "forces_32", "energy_64", "forces_64", "energy_ref64", "forces_ref64"}
    assert keys | ({"stress_ref64"} if "box" in stored else set()) == set(fresh)
    assert stored["forces_64"].shape == (n, 3) and stored["pos"].dtype == np.float64
    for key, value in fresh.items():
        ref = torch.as_tensor(stored[key]).double()
        err = float((torch.as_tensor(value).double() - ref).abs().max() / ref.abs().max())
        # torchmd-net's own numbers, recomputed: the same code on the same inputs; float32
        # reductions may reorder across thread counts (a few ulps), float64 is ~exact
        limit = 1e-5 if key.endswith("_32") else 1e-12
        assert err <= limit, (name, key, err)
    # the float64 reference backend agrees with torchmd-net float64 (what makes the fixture an
    # oracle for both comparisons on the GPU)
    for kind in ("energy", "forces"):
        e64, r64 = stored[f"{kind}_64"], stored[f"{kind}_ref64"]
        err = float(np.abs(e64 - r64).max() / np.abs(e64).max())
        assert err <= 1e-10, (name, kind, err)


def test_bench_systems_fixture():
    """The ASE-built benchmark systems: 64 g2 molecules as one batch and biphenyl (22 atoms)."""
    with np.load(os.path.join(fx.FIXTURES, "bench_systems.npz")) as data:
        batch, z, pos = data["g2_64_batch"], data["g2_64_z"], data["g2_64_pos"]
        assert batch.max() == 63 and len(z) == len(batch) == len(pos)
        assert np.all(np.diff(batch) >= 0)
        assert len(data["biphenyl_z"]) == 22 and data["biphenyl_pos"].shape == (22, 3)
        assert sorted(set(data["biphenyl_z"].tolist())) == [1, 6]
