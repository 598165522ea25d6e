"""Parity with torchmd-net 3.1 (pure-PyTorch path) on checkpoints torchmd-net writes itself.

Every case is run in float32 and float64; tolerances come from tests/tolerances.py (docs/spec.md).
The worst errors per dtype are written to the terminal summary (see conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from oracle import load_oracle, make_checkpoint, oracle_energy_forces, pair_prior
from systems import molecule_batch, water_box
from tolerances import assert_close

import tensornet_fast as tnf

ZBL = pair_prior("ZBL", 3.0, 64)
D2 = pair_prior("D2", 8.0, 128)

# name -> hyper-parameter overrides of tests/oracle.BASE_HPARAMS (F=32, K=16, 2 layers, r_c=5)
CASES = {
    "o3_2layers": {},
    "so3_2layers": {"equivariance_invariance_group": "SO(3)"},
    "o3_0layers": {"num_layers": 0},
    "o3_1layer": {"num_layers": 1},
    "so3_3layers": {"num_layers": 3, "equivariance_invariance_group": "SO(3)"},
    "lower_cutoff": {"cutoff_lower": 0.9, "cutoff_upper": 4.5},
    "atomref_standardize": {
        "prior_model": {"Atomref": {"max_z": 20}},
        "standardize": True,
        "_mean": -3.25,
        "_std": 1.7,
    },
    "charge": {"charge": True},
    "gauss_rbf": {"rbf_type": "gauss", "num_rbf": 12},
    "trainable_rbf_tanh": {"trainable_rbf": True, "activation": "tanh"},
    "zbl_d2": {"prior_model": [ZBL, D2]},
    "reduce_mean": {"reduce_op": "mean"},
}
DTYPES = {32: torch.float32, 64: torch.float64}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    paths = {}
    for k, (name, hp) in enumerate(CASES.items()):
        hp = dict(hp)
        mean, std = hp.pop("_mean", None), hp.pop("_std", None)
        for precision in DTYPES:
            paths[name, precision] = make_checkpoint(
                root / f"{name}_{precision}.ckpt",
                seed=100 + k,
                mean=mean,
                std=std,
                precision=precision,
                **hp,
            )
    return paths


def _compare(path, dtype, z, pos, batch=None, box=None, q=None, what=""):
    oracle = load_oracle(path)
    ours = tnf.load_model(path, backend="reference")
    y_ref, f_ref = oracle_energy_forces(oracle, z, pos, batch, box, q)
    y, f = ours(z, pos, batch, box=box, q=q)
    assert y.shape == y_ref.shape and f.shape == f_ref.shape
    errors = (
        assert_close(y, y_ref, dtype, "energy", what),
        assert_close(f, f_ref, dtype, "forces", what),
    )
    # a test that cannot fail is worthless: the energies and forces must be non-trivial
    assert y_ref.abs().max() > 1e-3 and f_ref.abs().max() > 1e-3
    return errors


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_batched_molecules(checkpoints, case, precision, parity_report):
    dtype = DTYPES[precision]
    z, pos, batch = molecule_batch(dtype=dtype)
    q = torch.tensor([1.0, -1.0, 0.0, 2.0], dtype=dtype) if CASES[case].get("charge") else None
    errs = _compare(checkpoints[case, precision], dtype, z, pos, batch, q=q, what=case)
    parity_report(f"{case} batch", precision, *errs)


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", ["o3_2layers", "so3_2layers", "zbl_d2"])
def test_300_atom_cluster(checkpoints, case, precision, parity_report):
    dtype = DTYPES[precision]
    z, pos, _ = water_box(5, seed=1, dtype=dtype)  # 375 atoms, open boundaries
    errs = _compare(checkpoints[case, precision], dtype, z, pos, what=case + " 375 atoms")
    parity_report(f"{case} 375-atom cluster", precision, *errs)


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize(
    "cell",
    [
        [[13.0, 0, 0], [0, 13.0, 0], [0, 0, 13.0]],
        [[13.0, 0, 0], [2.0, 13.0, 0], [1.0, 2.0, 13.0]],  # triclinic, torchmd-net reduced form
    ],
    ids=["orthorhombic", "triclinic"],
)
def test_periodic_box(checkpoints, cell, precision, parity_report):
    dtype = DTYPES[precision]
    z, pos, _ = water_box(4, spacing=3.25, seed=2, dtype=dtype)  # 192 atoms
    box = torch.tensor(cell, dtype=dtype)
    errs = _compare(checkpoints["o3_2layers", precision], dtype, z, pos, box=box, what="pbc")
    parity_report(f"o3_2layers periodic {cell[1][0] and 'triclinic' or 'ortho'}", precision, *errs)


def test_box_from_checkpoint(tmp_path):
    """box_vecs in the hyper-parameters makes the model periodic without a box argument."""
    cell = [[12.0, 0.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 12.0]]
    path = make_checkpoint(tmp_path / "box.ckpt", seed=5, precision=64, box_vecs=cell)
    z, pos, _ = water_box(4, spacing=3.0, seed=3)
    _compare(path, torch.float64, z, pos, what="box_vecs")
    y_box, _ = tnf.load_model(path)(z, pos, box=torch.tensor(cell, dtype=torch.float64))
    y_default, _ = tnf.load_model(path)(z, pos)
    torch.testing.assert_close(y_default, y_box, rtol=0, atol=0)


@pytest.mark.parametrize("precision", DTYPES)
def test_old_interleaved_checkpoint(tmp_path, checkpoints, precision):
    """An interleaved-layout file (torchmd-net < 2.6.2 marks it with check_errors) gives the same
    numbers as torchmd-net, which remaps it the same way; layout= overrides the guess."""
    dtype = DTYPES[precision]
    new = torch.load(checkpoints["so3_2layers", precision], weights_only=False)
    old = {
        "hyper_parameters": {**new["hyper_parameters"], "check_errors": True},
        "state_dict": dict(new["state_dict"]),
    }
    f = new["hyper_parameters"]["embedding_dimension"]
    keys = ["model.representation_model.tensor_embedding.linears_scalar.1"] + [
        f"model.representation_model.layers.{i}.linears_scalar.2" for i in range(2)
    ]
    for key in keys:  # blocked rows k*F + f  ->  interleaved rows 3f + k
        w, b = old["state_dict"][key + ".weight"], old["state_dict"][key + ".bias"]
        old["state_dict"][key + ".weight"] = w.reshape(3, f, -1).transpose(0, 1).reshape(3 * f, -1)
        old["state_dict"][key + ".bias"] = b.reshape(3, f).transpose(0, 1).reshape(3 * f)
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    z, pos, batch = molecule_batch(dtype=dtype)
    with pytest.warns(UserWarning, match="interleaved"):
        ours = tnf.load_model(path)
    y_new, f_new = tnf.load_model(checkpoints["so3_2layers", precision])(z, pos, batch)
    y_old, f_old = ours(z, pos, batch)
    torch.testing.assert_close(y_old, y_new, rtol=0, atol=0)
    torch.testing.assert_close(f_old, f_new, rtol=0, atol=0)
    _compare(path, dtype, z, pos, batch, what="interleaved")
    # The same file without the marker (as torchmd-net 2.6.2 writes it) needs the override.
    del old["hyper_parameters"]["check_errors"]
    torch.save(old, path)
    y_guess, _ = tnf.load_model(path)(z, pos, batch)
    y_forced, _ = tnf.load_model(path, layout="interleaved")(z, pos, batch)
    torch.testing.assert_close(y_forced, y_new, rtol=0, atol=0)
    assert (y_guess - y_new).abs().max() > 1e-4  # read as blocked: different (wrong) numbers


def test_legacy_output_network_keys(tmp_path, checkpoints):
    ckpt = torch.load(checkpoints["o3_1layer", 64], weights_only=False)
    state = {}
    for k, v in ckpt["state_dict"].items():
        state[k.replace("output_network.layers.", "output_network.")] = v
    ckpt["state_dict"] = state
    torch.save(ckpt, tmp_path / "legacy.ckpt")
    z, pos, batch = molecule_batch()
    y_legacy, _ = tnf.load_model(tmp_path / "legacy.ckpt")(z, pos, batch)
    y, _ = tnf.load_model(checkpoints["o3_1layer", 64])(z, pos, batch)
    torch.testing.assert_close(y_legacy, y, rtol=0, atol=0)


def test_remove_ref_energy_switches_atomref_on(tmp_path):
    path = make_checkpoint(
        tmp_path / "delta.ckpt",
        seed=9,
        precision=64,
        prior_model={"Atomref": {"max_z": 20, "enable": False}},
        remove_ref_energy=True,
    )
    z, pos, batch = molecule_batch()
    for kwargs in ({}, {"remove_ref_energy": False}):
        oracle = load_oracle(path, **kwargs)
        ours = tnf.load_model(path, **kwargs)
        y_ref, f_ref = oracle_energy_forces(oracle, z, pos, batch)
        y, f = ours(z, pos, batch)
        assert_close(y, y_ref, torch.float64, "energy")
        assert_close(f, f_ref, torch.float64, "forces")
    y_off, _ = tnf.load_model(path)(z, pos, batch)
    y_on, _ = tnf.load_model(path, remove_ref_energy=False)(z, pos, batch)
    assert (y_on - y_off).abs().min() > 1e-3


def test_float32_checkpoint_in_float64(checkpoints):
    """precision=64 runs a float32 checkpoint in float64: it then matches the float32 oracle
    to float32 rounding (the weights are the same numbers)."""
    z, pos, batch = molecule_batch(dtype=torch.float64)
    ours = tnf.load_model(checkpoints["o3_2layers", 32], precision=64)
    assert ours.dtype == torch.float64
    y_ref, f_ref = oracle_energy_forces(
        load_oracle(checkpoints["o3_2layers", 32]), z, pos.float(), batch
    )
    y, f = ours(z, pos, batch)
    assert_close(y, y_ref, torch.float32, "energy")
    assert_close(f, f_ref, torch.float32, "forces")
