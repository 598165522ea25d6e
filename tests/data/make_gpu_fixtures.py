"""Make the torchmd-net fixtures of the GPU check (bench/gpu_check.py), on CPU.

The GPU host has neither torchmd-net nor ASE, so what the Triton backend is compared with there
is made here and committed under tests/data/gpu_fixtures/:

- ``bench_model.ckpt``: a random-weight TensorNet made by torchmd-net 3.1's own ``create_model``
  (tests/oracle.py) with the benchmark model's shape: 2 layers, F = 128, K = 32, r_c = 5 A,
  O(3), expnorm, max_z = 20; float32 weights (loaded with ``precision=64`` for the float64
  references). One model, so the GPU host compiles one set of Triton kernels for it.
- ``molecules.npz``: 4 g2 molecules in one batch (CH3OH, C6H6, H2O, CH3Cl; 26 atoms);
  ``water_box.npz``: 64 waters (192 atoms) in a 12.4 A periodic cube (r_c <= half the box, as
  torchmd-net needs). Each holds ``z``, ``pos`` (float64), ``batch``, ``box`` (water only) and
  torchmd-net's ``energy_{32,64}`` / ``forces_{32,64}`` on its pure-PyTorch path, plus the
  float64 reference backend's ``energy_ref64``, ``forces_ref64`` and (water) ``stress_ref64``
  (torchmd-net computes no stress);
- ``bench_systems.npz``: the benchmark's systems that need ASE to build (bench/systems.py): the
  first 64 molecules of ASE's g2 set as one batch (``g2_64_{z,pos,batch}``) and biphenyl
  (``biphenyl_{z,pos}``, 22 atoms). Water boxes are built on the GPU host (numpy only).

    python tests/data/make_gpu_fixtures.py          # rewrite the fixtures
    python tests/data/make_gpu_fixtures.py --check  # recompute and compare (the CI test's way)

tests/backends/test_gpu_fixtures.py checks that the committed files still match torchmd-net.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
for p in (TESTS, ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

FIXTURES = os.path.join(HERE, "gpu_fixtures")
CKPT = os.path.join(FIXTURES, "bench_model.ckpt")
MODEL = dict(embedding_dimension=128, num_layers=2, num_rbf=32, cutoff_upper=5.0, max_z=20)
SEED = 2025


def systems() -> dict[str, dict[str, np.ndarray]]:
    from systems import molecule_batch, water_box

    z, pos, batch = molecule_batch(dtype=torch.float64, seed=3)
    zw, posw, box = water_box(4, spacing=3.1, seed=11, dtype=torch.float64)
    return {
        "molecules": dict(z=z.numpy(), pos=pos.numpy(), batch=batch.numpy()),
        "water_box": dict(
            z=zw.numpy(), pos=posw.numpy(), batch=np.zeros(len(zw), np.int64), box=box.numpy()
        ),
    }


def outputs(ckpt: str, system: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchmd-net's energies and forces in float32 and float64, and the float64 reference
    backend's energy, forces (and stress with a box)."""
    from oracle import load_oracle, oracle_energy_forces

    import tensornet_fast as tnf

    z = torch.as_tensor(system["z"])
    batch = torch.as_tensor(system["batch"])
    out = {}
    for precision, dtype in ((32, torch.float32), (64, torch.float64)):
        pos = torch.as_tensor(system["pos"]).to(dtype)
        box = torch.as_tensor(system["box"]).to(dtype) if "box" in system else None
        oracle = load_oracle(ckpt, precision=precision)
        y, f = oracle_energy_forces(oracle, z, pos, batch, box=box)
        out[f"energy_{precision}"], out[f"forces_{precision}"] = y.numpy(), f.numpy()
    ref = tnf.load_model(ckpt, backend="reference", precision=64)
    pos = torch.as_tensor(system["pos"])
    box = torch.as_tensor(system["box"]) if "box" in system else None
    res = ref.compute(z, pos, batch, box=box, stress=box is not None)
    out["energy_ref64"], out["forces_ref64"] = res["energy"].numpy(), res["forces"].numpy()
    if box is not None:
        out["stress_ref64"] = res["stress"].numpy()
    return out


def bench_systems() -> dict[str, np.ndarray]:
    from bench import systems as bench_sys

    g2, bip = bench_sys.g2_batch(64), bench_sys.single_molecule()
    return dict(g2_64_z=g2.z, g2_64_pos=g2.pos, g2_64_batch=g2.batch, biphenyl_z=bip.z,
                biphenyl_pos=bip.pos)  # fmt: skip


def make() -> None:
    from oracle import make_checkpoint

    os.makedirs(FIXTURES, exist_ok=True)
    make_checkpoint(CKPT, seed=SEED, precision=32, **MODEL)
    for name, system in systems().items():
        np.savez_compressed(os.path.join(FIXTURES, f"{name}.npz"), **system,
                            **outputs(CKPT, system))  # fmt: skip
        print("wrote", os.path.join(FIXTURES, f"{name}.npz"))
    np.savez_compressed(os.path.join(FIXTURES, "bench_systems.npz"), **bench_systems())


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
        return {k: data[k] for k in data.files}


def check() -> dict[str, float]:
    """Relative differences between the committed outputs and a fresh computation."""
    diffs = {}
    for name in ("molecules", "water_box"):
        stored = load(name)
        fresh = outputs(CKPT, {k: stored[k] for k in ("z", "pos", "batch", "box") if k in stored})
        for key, value in fresh.items():
            ref = stored[key].astype(np.float64)
            scale = max(float(np.abs(ref).max()), 1e-30)
            diffs[f"{name}.{key}"] = float(np.abs(value.astype(np.float64) - ref).max() / scale)
    return diffs


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    p.add_argument("--systems-only", action="store_true", help="only bench_systems.npz")
    a = p.parse_args()
    if a.check:
        for key, diff in check().items():
            print(f"{key}: {diff:.2e}")
    elif a.systems_only:
        np.savez_compressed(os.path.join(FIXTURES, "bench_systems.npz"), **bench_systems())
    else:
        make()
