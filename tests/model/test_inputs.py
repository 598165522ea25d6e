"""Bad input gets a clear error, never a wrong number: atoms handed to the model and files handed
to load_model."""

from __future__ import annotations

import pytest
import torch
from oracle import make_checkpoint
from systems import molecule_batch

import tensornet_fast as tnf
from tensornet_fast import CheckpointError, InputError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("inputs") / "m.ckpt",
        seed=21,
        precision=64,
        num_layers=1,
        embedding_dimension=16,
        max_z=20,
    )


@pytest.fixture(scope="module")
def model(ckpt):
    return tnf.load_model(ckpt)


# ---------------------------------------------------------------- atoms
def test_valid_call_shapes(model):
    z, pos, batch = molecule_batch()
    e, f = model(z, pos, batch)
    assert e.shape == (4, 1) and f.shape == pos.shape
    assert not e.requires_grad and not f.requires_grad
    assert not pos.requires_grad  # the caller's tensor is left alone (torchmd-net mutates it)


def test_derivative_false_returns_empty_forces(ckpt):
    z, pos, batch = molecule_batch()
    e, f = tnf.load_model(ckpt, derivative=False)(z, pos, batch)
    assert e.shape == (4, 1) and f.numel() == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_positions(model, bad):
    z, pos, batch = molecule_batch()
    pos[3, 1] = bad
    with pytest.raises(InputError, match="NaN or inf.*3"):
        model(z, pos, batch)


@pytest.mark.parametrize("value", [20, 99, -1])
def test_atom_type_outside_model(model, value):
    z, pos, batch = molecule_batch()
    z[2] = value
    with pytest.raises(InputError, match=f"[zZ]={value}\\b.*(not among|not an atomic)"):
        model(z, pos, batch)


def test_same_z_tensor_edited_between_calls(model):
    """The range check is skipped for a z tensor that passed it and was not edited since (MD
    loops): an in-place edit (version counter) is checked again; batch=None gives the numbers of
    an explicit one-molecule batch; coincident atoms are still refused without a batch."""
    z, pos, batch = molecule_batch(("CH3OH",))
    e0, f0 = model(z, pos, batch)
    e1, f1 = model(z, pos)
    e2, f2 = model(z, pos)
    assert torch.equal(e0, e1) and torch.equal(f0, f1) and torch.equal(e1, e2)
    z[2] = 20
    with pytest.raises(InputError, match="not among"):
        model(z, pos)
    z[2] = 1
    pos[1] = pos[0]
    with pytest.raises(InputError, match="coincide"):
        model(z, pos)


def test_coincident_atoms(model):
    z, pos, batch = molecule_batch()
    pos[1] = pos[0]
    with pytest.raises(InputError, match="atoms 0 and 1 coincide|atoms 1 and 0 coincide"):
        model(z, pos, batch)


def test_empty_system(model):
    with pytest.raises(InputError, match="empty"):
        model(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda z, p, b: (z, p[:, :2], b), r"pos must be \[n_atoms, 3\]"),
        (lambda z, p, b: (z[None], p, b), "z must be a 1-D"),
        (lambda z, p, b: (z[:-1], p, b), "atoms but pos has"),
        (lambda z, p, b: (z.double(), p, b), "z must be an integer"),
        (lambda z, p, b: (z, p.float(), b), "pos is torch.float32 but the model is torch.float64"),
        (lambda z, p, b: (z, p, b[:-1]), "batch must be an integer tensor of shape"),
        (lambda z, p, b: (z, p, b.double()), "batch must be an integer tensor"),
        (lambda z, p, b: (z, p, b - 1), "batch indices must be >= 0"),
    ],
    ids=["pos2d", "z2d", "count", "zfloat", "posdtype", "batchlen", "batchfloat", "batchneg"],
)
def test_wrong_shapes_and_dtypes(model, mutate, message):
    z, pos, batch = mutate(*molecule_batch())
    with pytest.raises(InputError, match=message):
        model(z, pos, batch)


def test_bad_boxes(model):
    z, pos, batch = molecule_batch()
    with pytest.raises(InputError, match="singular"):
        model(
            z,
            pos,
            batch,
            box=torch.tensor([[10.0, 0, 0], [20.0, 0, 0], [0, 0, 10.0]], dtype=torch.float64),
        )
    with pytest.raises(InputError, match="box must be"):
        model(z, pos, batch, box=torch.eye(3, dtype=torch.float64).repeat(2, 1, 1))
    with pytest.raises(InputError, match="NaN or inf"):
        model(z, pos, batch, box=torch.full((3, 3), float("nan"), dtype=torch.float64))


def test_per_molecule_boxes(model):
    z, pos, batch = molecule_batch()
    boxes = torch.stack([torch.eye(3, dtype=torch.float64) * (20 + k) for k in range(4)])
    e_box, _ = model(z, pos, batch, box=boxes)
    e_open, _ = model(z, pos, batch)
    torch.testing.assert_close(e_box, e_open)  # 20 A cells: no image within the 5 A cutoff


def test_charge_requires_one_value_per_molecule(tmp_path):
    path = make_checkpoint(tmp_path / "q.ckpt", seed=3, precision=64, charge=True, num_layers=1)
    model = tnf.load_model(path)
    z, pos, batch = molecule_batch()
    with pytest.raises(InputError, match="one total charge per molecule"):
        model(z, pos, batch, q=torch.tensor([1.0, 0.0]))
    e0, _ = model(z, pos, batch)
    e1, _ = model(z, pos, batch, q=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert float((e1 - e0).abs()[0]) > 1e-6 and float((e1 - e0).abs()[1:].max()) == 0.0


def test_charge_ignored_for_models_without_it(model):
    z, pos, batch = molecule_batch()
    e0, _ = model(z, pos, batch)
    with pytest.warns(UserWarning, match="without total charges"):
        e1, _ = model(z, pos, batch, q=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(e0, e1)


# ---------------------------------------------------------------- checkpoints
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        tnf.load_model(tmp_path / "nope.ckpt")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        tnf.load_model(path)


def test_truncated_file(tmp_path, ckpt):
    data = open(ckpt, "rb").read()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        tnf.load_model(path)


def test_not_a_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        tnf.load_model(tmp_path / "list.ckpt")


def _edited(ckpt, tmp_path, hparams=None, drop=(), state_edit=None):
    data = torch.load(ckpt, weights_only=False)
    data["hyper_parameters"].update(hparams or {})
    for key in drop:
        del data["state_dict"][key]
    if state_edit:
        state_edit(data["state_dict"])
    path = tmp_path / "edited.ckpt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"model": "equivariant-transformer"}, "not a TensorNet checkpoint"),
        ({"model": "tensornet2"}, "not a TensorNet checkpoint"),
        ({"output_model": "DipoleMoment"}, "unsupported output model"),
        ({"activation": "relu6"}, "activation"),
        ({"prior_model": "Coulomb", "prior_args": {}}, "prior model 'Coulomb' is not supported"),
        ({"embedding_dimension": 24}, "weight shapes do not match"),
    ],
)
def test_unsupported_checkpoints(ckpt, tmp_path, hparams, message):
    with pytest.raises(CheckpointError, match=message):
        tnf.load_model(_edited(ckpt, tmp_path, hparams))


def test_missing_keys_are_named(ckpt, tmp_path):
    key = "model.representation_model.layers.0.linears_tensor.4.weight"
    with pytest.raises(CheckpointError, match=r"missing keys.*layers\.0\.linears_tensor\.4"):
        tnf.load_model(_edited(ckpt, tmp_path, drop=[key]))


def test_nan_weights(ckpt, tmp_path):
    def poison(state):
        state["model.representation_model.linear.weight"][0, 0] = float("nan")

    with pytest.raises(CheckpointError, match="NaN/inf"):
        tnf.load_model(_edited(ckpt, tmp_path, state_edit=poison))


def test_unknown_override(ckpt):
    with pytest.raises(TypeError, match="unknown model override"):
        tnf.load_model(ckpt, cutof_upper=4.0)


def test_unknown_layout_and_backend(ckpt):
    with pytest.raises(ValueError, match="layout"):
        tnf.load_model(ckpt, layout="sideways")
    with pytest.raises(ValueError, match="unknown backend"):
        tnf.load_model(ckpt, backend="quantum")


def test_plain_state_dict(ckpt, tmp_path):
    data = torch.load(ckpt, weights_only=False)
    torch.save(data["state_dict"], tmp_path / "plain.pt")
    with pytest.warns(UserWarning, match="plain state dict"):
        plain = tnf.load_model(tmp_path / "plain.pt", cutoff_upper=5.0)
    full = tnf.load_model(ckpt)
    z, pos, batch = molecule_batch()
    e_plain, f_plain = plain(z, pos, batch)
    e_full, f_full = full(z, pos, batch)
    assert torch.equal(e_plain, e_full) and torch.equal(f_plain, f_full)


def test_default_model_loads():
    model = tnf.load_model("default")
    z, pos, batch = molecule_batch(dtype=model.dtype)
    e, f = model(z, pos, batch)
    assert torch.isfinite(e).all() and torch.isfinite(f).all()
