"""Issue #22, model side: every input gets the right number or a clear error.

One section per class of failure found by the adversarial pass: derived state that goes stale,
out-of-domain inputs, non-finite results, sizes over budget, inference mode, error types and
messages of every public entry point, numpy / list inputs, and safe checkpoint loading. Each
test compares with a trusted result (a fresh load of the same weights, the reference backend)
or asserts the error class and message."""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from oracle import make_checkpoint, make_small_checkpoint
from paths import ROOT
from systems import molecule_batch

import tensornet_fast as tnf
from tensornet_fast import CheckpointError, InputError
from tensornet_fast.backends.cpu import CpuBackend
from tensornet_fast.errors import DomainWarning


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """F=16, K=8, r_c=4 A, ZBL prior (tests/oracle.py), max_z=20."""
    return make_small_checkpoint(tmp_path_factory.mktemp("adv") / "small.ckpt", seed=5)


def _fresh(path, model, **kw):
    """A fresh load holding ``model``'s current weights."""
    fresh = tnf.load_model(path, **kw)
    fresh.to(model.dtype)
    fresh.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    return fresh


def _outputs(model, z, pos, batch):
    return model(z, pos.to(model.dtype), batch)


# --------------------------------------------------------------- 1. derived state follows weights
def _edit_no_grad(m):
    with torch.no_grad():
        m.representation_model.layers[0].linears_scalar[1].weight.mul_(1.1)


def _edit_data(m):
    m.representation_model.tensor_embedding.distance_proj2.weight.data.mul_(0.9)


def _edit_data_slice(m):
    m.representation_model.layers[0].linears_tensor[2].weight.data[3, 5] += 0.5


def _replace_parameter(m):
    emb = m.representation_model.tensor_embedding.emb2
    emb.weight = torch.nn.Parameter(emb.weight.detach() * 1.05)


def _replace_module(m):
    old = m.representation_model.layers[0].linears_scalar[0]
    new = copy.deepcopy(old)
    with torch.no_grad():
        new.bias.add_(0.2)
    m.representation_model.layers[0].linears_scalar[0] = new


def _edit_buffer(m):
    m.representation_model.distance_expansion.means.data.mul_(1.02)


def _load_state_dict(m):
    state = copy.deepcopy(m.state_dict())
    for k, v in state.items():
        if v.is_floating_point() and "atomref" not in k and not k.endswith(("C_6", "R_r")):
            v.mul_(1.01)
    m.load_state_dict(state)


def _round_trip_float64(m):
    m.to(torch.float64)
    z, pos, batch = molecule_batch()
    m(z, pos, batch)  # builds float64 state
    with torch.no_grad():
        m.representation_model.layers[-1].linears_scalar[2].weight.mul_(1.1)
    m.to(torch.float32)


EDITS = {
    "no_grad in-place": _edit_no_grad,
    "p.data in-place": _edit_data,
    "p.data one element": _edit_data_slice,
    "replaced Parameter": _replace_parameter,
    "replaced sub-module": _replace_module,
    "buffer.data": _edit_buffer,
    "load_state_dict": _load_state_dict,
    ".to(float64), edit, .to(float32)": _round_trip_float64,
}

BACKENDS = {
    "reference": dict(backend="reference"),
    "cpu exact": dict(backend="cpu", filter_mode="exact"),
    "cpu tabulated": dict(backend="cpu", filter_mode="tabulated"),
    "cpu auto": dict(backend="cpu", filter_mode="auto"),
    "cpu torch path": dict(backend=CpuBackend(use_extension=False), filter_mode="tabulated"),
}


# every edit on the cpu backend (tables, TableCheck / auto, packed weights, pair tables), three
# kinds on the other backends
CASES = [(b, e) for b in ("cpu tabulated", "cpu exact") for e in EDITS] + [
    (b, e)
    for b in ("reference", "cpu auto", "cpu torch path")
    for e in ("p.data in-place", "buffer.data", ".to(float64), edit, .to(float32)")
]


@pytest.mark.parametrize("backend, edit", CASES)
def test_derived_state_follows_weights(small, backend, edit):
    """After each kind of weight change a call equals a fresh load of the same weights
    bitwise (before the fix: tables, packed weights and pair tables of the old weights)."""
    kw = BACKENDS[backend]
    model = tnf.load_model(small, **kw)
    z, pos, batch = molecule_batch(dtype=torch.float32)
    before = _outputs(model, z, pos, batch)  # builds the derived state
    EDITS[edit](model)
    e, f = _outputs(model, z, pos, batch)
    fresh_kw = dict(kw)
    if isinstance(fresh_kw["backend"], CpuBackend):
        fresh_kw["backend"] = CpuBackend(use_extension=False)
    e_ref, f_ref = _outputs(_fresh(small, model, **fresh_kw), z, pos, batch)
    assert not torch.equal(e, before[0]), "the edit changed nothing: not a test"
    assert torch.equal(e, e_ref) and torch.equal(f, f_ref), (
        float((e - e_ref).abs().max()),
        float((f - f_ref).abs().max()),
    )


def test_default_model_tables_follow_load_state_dict():
    """The failure of the report: the bundled model, 8 atoms, load_state_dict of other weights."""
    model = tnf.load_model("default")
    other = tnf.load_model("default")
    _load_state_dict(other)
    z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1])
    pos = torch.tensor(
        [[0, 0, 0], [1.5, 0, 0], [2.2, 1.1, 0], [-0.6, 0.9, 0], [-0.6, -0.9, 0], [2.0, -0.9, 0.3]]
        + [[1.9, 0.1, -1.0], [3.1, 1.0, 0.2]],
        dtype=torch.float32,
    )
    model(z, pos)
    model.load_state_dict(other.state_dict())
    e, f = model(z, pos)
    e_ref, f_ref = other(z, pos)
    assert torch.equal(e, e_ref) and torch.equal(f, f_ref)


def test_cache_keeps_old_storages_alive(small):
    """A derived entry holds the storages its key names: no later tensor can take their
    addresses (the .to(float64) / .to(float32) round trip put new weights at old addresses)."""
    from tensornet_fast.backends.shared.cache import weight_tensors

    model = tnf.load_model(small)
    z, pos, batch = molecule_batch(dtype=torch.float32)
    model(z, pos, batch)

    def floats(tensors):  # integer buffers are not converted by .to(dtype): same storage
        return {t.data_ptr() for t in tensors if t.is_floating_point() and t.numel()}

    kept = floats(model.__dict__["_derived_keep"]["cpu_prepared"])
    assert kept == floats(weight_tensors(model))
    model.to(torch.float64)
    model.to(torch.float32)
    assert not kept & floats(weight_tensors(model))


def test_parameters_are_tracked_after_replacement(small):
    """A Parameter put in after load is made tracked when the key is read, so its later .data
    edits are seen too."""
    from tensornet_fast.backends.shared.cache import TrackedParameter

    model = tnf.load_model(small)
    z, pos, batch = molecule_batch(dtype=torch.float32)
    lin = model.representation_model.linear
    lin.weight = torch.nn.Parameter(lin.weight.detach().clone())
    model(z, pos, batch)
    assert type(lin.weight) is TrackedParameter
    lin.weight.data.mul_(1.1)
    e, _ = model(z, pos, batch)
    e_ref, _ = _fresh(small, model)(z, pos, batch)
    assert torch.equal(e, e_ref)


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("mode", ["exact", "tabulated"])
def test_triton_state_follows_weights(tmp_path, mode):
    """Padded filter weights and device tables of the triton backend (interpreter on CPU)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter")
    path = make_checkpoint(tmp_path / "t.ckpt", seed=3, embedding_dimension=8, num_rbf=4)
    model = tnf.load_model(path, backend="triton", filter_mode=mode)
    z = torch.tensor([6, 1, 1, 8])
    pos = torch.tensor([[0, 0, 0], [1.0, 0, 0], [0, 1.1, 0], [0.2, 0.1, 1.3]])
    model(z, pos)
    _edit_data(model)
    _edit_buffer(model)
    e, f = model(z, pos)
    e_ref, f_ref = _fresh(path, model, backend="triton", filter_mode=mode)(z, pos)
    assert torch.equal(e, e_ref) and torch.equal(f, f_ref)


def test_md_step_follows_weights_and_refuses_a_new_dtype(small):
    from tensornet_fast.md import MDStep

    model = tnf.load_model(small, backend="reference")
    z, pos, _ = molecule_batch(names=("CH3OH",), dtype=torch.float32)
    step = MDStep(model, z, pos)
    step(pos)
    _edit_data(model)
    e, f = step(pos)
    e_ref, f_ref = model(z, pos)
    torch.testing.assert_close(e, e_ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-5)
    model.to(torch.float64)
    with pytest.raises(InputError, match="create a new MDStep"):
        step(pos)


# --------------------------------------------------------------- 3. out-of-domain inputs
def _card_elements() -> tuple[int, ...]:
    from tensornet_fast.model.elements import SYMBOLS

    text = open(os.path.join(ROOT, "tensornet_fast", "data", "MODEL_CARD.md")).read()
    listed = re.search(r"trained elements: ([A-Za-z, ]+)\*\*", text).group(1)
    return tuple(sorted(SYMBOLS.index(s.strip()) for s in listed.split(",")))


def test_default_model_knows_its_card_elements():
    assert tnf.load_model("default").elements == _card_elements() == (1, 6, 7, 8, 9, 16, 17)


@pytest.mark.parametrize("zs, names", [([14], ["Si"]), ([11, 15], ["Na", "P"])])
def test_out_of_domain_elements_warn_once_per_set(zs, names):
    model = tnf.load_model("default")
    z, pos, batch = molecule_batch(dtype=torch.float32)
    z = z.clone()
    z[: len(zs)] = torch.tensor(zs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(z, pos, batch)
        model(z, pos, batch)  # same set: no second warning
    domain = [w for w in caught if issubclass(w.category, DomainWarning)]
    assert len(domain) == 1
    for name, zz in zip(names, zs):
        assert f"{name} (Z={zz}) is not among this model's trained elements H C N O F S Cl" in str(
            domain[0].message
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z2 = z.clone()
        z2[5] = 5  # B: a new set
        model(z2, pos, batch)
    assert len([w for w in caught if issubclass(w.category, DomainWarning)]) == 1


def test_domain_issues_api_and_charge():
    model = tnf.load_model("default")
    assert model.domain_issues([1, 6, 8]) == []
    issues = model.domain_issues(np.array([14, 1, 14]), q=[0.0])
    assert issues == ["Si (Z=14) is not among this model's trained elements H C N O F S Cl"]
    charged = model.domain_issues([6], q=1)
    assert len(charged) == 1 and "trained without total charges" in charged[0]
    z, pos, batch = molecule_batch(dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e_q, _ = model(z, pos, batch, q=torch.ones(4))
        model(z, pos, batch, q=torch.full((4,), 2.0))  # charged again: no second warning
    assert len([w for w in caught if issubclass(w.category, DomainWarning)]) == 1
    assert torch.equal(e_q, model(z, pos, batch)[0])  # q ignored, as torchmd-net


def test_elements_from_checkpoint_metadata_and_unknown(small, tmp_path):
    assert tnf.load_model(small).elements is None  # random Atomref: nothing to tell
    ckpt = torch.load(small, weights_only=False)
    ckpt["hyper_parameters"]["elements"] = ["H", "C", 8]
    path = tmp_path / "meta.ckpt"
    torch.save(ckpt, path)
    model = tnf.load_model(path)
    assert model.elements == (1, 6, 8)
    z, pos, batch = molecule_batch(names=("CH3Cl",), dtype=torch.float32)
    with pytest.warns(DomainWarning, match=r"Cl \(Z=17\) is not among this model's trained"):
        model(z, pos, batch)
    ckpt["hyper_parameters"]["elements"] = ["Xx"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="'Xx' is not an element symbol"):
        tnf.load_model(path)


# --------------------------------------------------------------- 4. non-finite results
@pytest.mark.parametrize("q", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_charge(tmp_path, q):
    path = make_small_checkpoint(tmp_path / "c.ckpt", seed=2, charge=True)
    model = tnf.load_model(path)
    z, pos, batch = molecule_batch(dtype=torch.float32)
    with pytest.raises(InputError, match="q .total charge. must be finite"):
        model(z, pos, batch, q=torch.tensor([0.0, q, 0.0, 0.0]))


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("how", ["nan weight", "overflow"])
def test_non_finite_outputs_raise(small, backend, how):
    model = tnf.load_model(small, **BACKENDS[backend])
    z, pos, batch = molecule_batch(dtype=torch.float32)
    model(z, pos, batch)
    with torch.no_grad():
        if how == "nan weight":
            model.output_model.output_network.layers[0].weight[0, 0] = float("nan")
        else:
            # finite, absurd: every atom's epsilon is 3e38, their sum overflows float32
            model.output_model.output_network.layers[-1].bias.fill_(3e38)
    match = "holds NaN/inf" if how == "nan weight" else "NaN/inf energy.*extreme"
    with pytest.raises(InputError, match=match):
        model(z, pos, batch)


# --------------------------------------------------------------- 7. sizes over budget
def test_tiny_periodic_cell_is_refused_before_allocating():
    model = tnf.load_model("default")
    z, pos = torch.tensor([6]), torch.zeros(1, 3)
    with pytest.raises(InputError, match=r"far smaller than the cutoff.*1\.0\de\+09 periodic"):
        model(z, pos, box=torch.eye(3) * 0.01)


@pytest.mark.parametrize("x", [1e17, 1e200])
def test_far_coordinates_are_refused(x):
    model = tnf.load_model("default", precision=64)
    z = torch.tensor([6, 8])
    pos = torch.tensor([[0.0, 0, 0], [1.2, 0, 0]], dtype=torch.float64)
    pos[1, 0] += x
    with pytest.raises(InputError, match="beyond the limit"):
        model(z, pos, box=torch.eye(3, dtype=torch.float64) * 10)


def test_positions_many_cells_away_are_refused():
    model = tnf.load_model("default", precision=64)
    z = torch.tensor([6, 8])
    pos = torch.tensor([[0.0, 0, 0], [1.2, 0, 0]], dtype=torch.float64) + 3e7
    with pytest.raises(InputError, match="cells away from their periodic cell"):
        model(z, pos, box=torch.eye(3, dtype=torch.float64) * 10)
    # a few hundred cells away (an unwrapped MD trajectory) is fine and exact
    e_far, f_far = model(z, pos - 3e7 + 2000.0, box=torch.eye(3, dtype=torch.float64) * 10)
    e, f = model(z, pos - 3e7, box=torch.eye(3, dtype=torch.float64) * 10)
    torch.testing.assert_close(e_far, e, rtol=1e-12, atol=0)
    torch.testing.assert_close(f_far, f, rtol=1e-9, atol=1e-10)


def test_molecule_index_gaps_are_bounded():
    model = tnf.load_model("default")
    z, pos = torch.tensor([6, 6, 6]), torch.tensor([[0.0, 0, 0], [1.3, 0, 0], [0, 1.3, 0]])
    with pytest.raises(InputError, match=r"1000000001 molecules for 3 atoms.*budget of 1048576"):
        model(z, pos, batch=torch.tensor([0, 0, 10**9]))
    e, _ = model(z, pos, batch=torch.tensor([0, 0, 2]))  # small gaps: empty molecules, E = 0
    assert e.shape == (3, 1) and float(e[1]) == 0.0


# --------------------------------------------------------------- 8. inference mode, Hessians
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_inference_mode(small, backend):
    model = tnf.load_model(small, backend=backend)
    z, pos, batch = molecule_batch(dtype=torch.float32)
    e, f = model(z, pos, batch)
    with torch.inference_mode():
        z_i, pos_i, batch_i = z.clone(), pos.clone(), batch.clone()  # inference tensors
        e_i, f_i = model(z_i, pos_i, batch_i)
        out = model.compute(z_i, pos_i, batch_i, atom_energies=True)
    assert torch.equal(e, e_i) and torch.equal(f, f_i)
    assert torch.equal(out["forces"], f)
    e2, f2 = model(z, pos, batch)  # state built under inference mode works outside it
    assert torch.equal(e2, e) and torch.equal(f2, f)


def test_md_step_under_inference_mode(small):
    from tensornet_fast.md import MDStep

    model = tnf.load_model(small, backend="reference")
    z, pos, _ = molecule_batch(names=("H2O",), dtype=torch.float32)
    step = MDStep(model, z, pos)
    e, f = step(pos)
    with torch.inference_mode():
        e_i, f_i = step(pos.clone())
    assert torch.equal(e, e_i) and torch.equal(f, f_i)


def test_hessian_on_cpu_names_the_reference_backend(small):
    model = tnf.load_model(small, backend="cpu")
    z, pos, _ = molecule_batch(names=("H2O",), dtype=torch.float32)
    pos = pos.clone().requires_grad_(True)
    _, f = model(z, pos)
    with pytest.raises(InputError, match="backend='reference'"):
        torch.autograd.grad(f.sum(), pos)
    ref = tnf.load_model(small, backend="reference")
    _, f_ref = ref(z, pos)
    (h,) = torch.autograd.grad(f_ref[0, 0], pos)  # a Hessian row
    assert torch.isfinite(h).all()


# --------------------------------------------------------------- 12. error types and messages
def _model():
    return tnf.load_model("default")


Z3 = torch.tensor([6, 8, 1])
P3 = torch.tensor([[0.0, 0, 0], [1.2, 0, 0], [0, 1.0, 0]])

BAD_CALLS = {
    "load_model cutoff_upper=inf": (
        lambda: tnf.load_model("default", cutoff_upper=float("inf")),
        InputError,
        r"override cutoff_upper=inf.*finite",
    ),
    "load_model max_z=-1": (
        lambda: tnf.load_model("default", max_z=-1),
        InputError,
        r"override max_z=-1.*max_z=-1",
    ),
    "load_model precision=16": (
        lambda: tnf.load_model("default", precision=16),
        InputError,
        r"precision 16 \(supported: 32, 64\)",
    ),
    "load_model num_layers=1.5": (
        lambda: tnf.load_model("default", num_layers=1.5),
        InputError,
        "num_layers must be an integer",
    ),
    "load_model unknown override": (
        lambda: tnf.load_model("default", cutof=5.0),
        TypeError,  # also an InputError
        "unknown model override cutof=5.0",
    ),
    "load_model layout": (
        lambda: tnf.load_model("default", layout="columns"),
        InputError,
        "layout must be one of auto, blocked, interleaved, got 'columns'",
    ),
    "load_model backend": (
        lambda: tnf.load_model("default", backend="gpu"),
        InputError,
        "unknown backend 'gpu'; choose one of",
    ),
    "load_model filter_mode": (
        lambda: tnf.load_model("default", filter_mode="fast"),
        InputError,
        "filter_mode must be 'auto' or one of",
    ),
    "load_model device": (
        lambda: tnf.load_model("default", device="gpu0"),
        InputError,
        "device must be a torch.device or a name",
    ),
    "load_model derivative": (
        lambda: tnf.load_model("default", derivative="yes"),
        InputError,
        "derivative must be True or False",
    ),
    "load_model path type": (
        lambda: tnf.load_model(42),
        CheckpointError,
        "path must be a checkpoint file name",
    ),
    "call element": (
        lambda: _model()(torch.tensor([35]), torch.zeros(1, 3)),
        InputError,
        r"Br \(Z=35\) is not among this model's elements H C N O F S Cl",
    ),
    "call negative z": (
        lambda: _model()(torch.tensor([-1]), torch.zeros(1, 3)),
        InputError,
        "z=-1 is not an atomic number",
    ),
    "call float z": (
        lambda: _model()(torch.tensor([6.0]), torch.zeros(1, 3)),
        InputError,
        "z must be an integer tensor of atom types",
    ),
    "call bool batch": (
        lambda: _model()(Z3, P3, batch=torch.tensor([True, False, True])),
        InputError,
        "batch must be an integer tensor",
    ),
    "call list box singular": (
        lambda: _model()(Z3, P3, box=[[5, 0, 0], [10, 0, 0], [0, 0, 5]]),
        InputError,
        "box is singular",
    ),
    "call q wrong count": (
        lambda: _model()(Z3, P3, q=[0.0, 1.0]),
        InputError,
        r"q must hold one total charge per molecule \(1\)",
    ),
    "call q text": (
        lambda: _model()(Z3, P3, q="neutral"),
        InputError,
        "q must be a tensor, numpy array or list of numbers",
    ),
    "call pos text": (
        lambda: _model()(Z3, "positions"),
        InputError,
        "pos must",
    ),
    "call stress without box": (
        lambda: _model().compute(Z3, P3, stress=True),
        InputError,
        "stress needs a periodic box",
    ),
    "radius_graph inf cutoff": (
        lambda: tnf.radius_graph(P3, float("inf")),
        InputError,
        "cutoff must be a positive finite number, got inf",
    ),
    "radius_graph text cutoff": (
        lambda: tnf.radius_graph(P3, "5"),
        InputError,
        "cutoff must be a positive finite number, got '5'",
    ),
    "radius_graph bool batch": (
        lambda: tnf.radius_graph(P3, 5.0, batch=torch.tensor([False, False, True])),
        InputError,
        "batch must be an integer tensor, got torch.bool",
    ),
    "radius_graph list batch": (
        lambda: tnf.radius_graph(P3, 5.0, batch=[0, 0, 1]),
        InputError,
        "batch must be an integer tensor of shape",
    ),
    "radius_graph backend": (
        lambda: tnf.radius_graph(P3, 5.0, backend="fast"),
        InputError,
        "backend must be 'compiled', 'reference' or None",
    ),
    "StaticRadiusGraph capacity": (
        lambda: tnf.StaticRadiusGraph(5.0, -1, P3),
        InputError,
        "capacity must be an integer >= 0",
    ),
    "StaticRadiusGraph max_abs": (
        lambda: tnf.StaticRadiusGraph(5.0, 10, P3, max_abs=float("nan")),
        InputError,
        "max_abs must be finite",
    ),
    "VerletList skin": (
        lambda: tnf.VerletList(5.0, skin=-1.0),
        InputError,
        "skin must be a finite number >= 0",
    ),
    "VerletList cutoff": (
        lambda: tnf.VerletList("5", skin=1.0),
        InputError,
        "cutoff must be a positive finite number",
    ),
    "MDStep skin": (
        lambda: __import__("tensornet_fast.md", fromlist=["MDStep"]).MDStep(
            tnf.load_model("default", backend="reference"), Z3, P3, skin=float("nan")
        ),
        InputError,
        "skin must be a finite number >= 0",
    ),
    "MDStep pos shape": (
        lambda: (
            __import__("tensornet_fast.md", fromlist=["MDStep"])
            .MDStep(tnf.load_model("default", backend="reference"), Z3, P3)
            .step(P3[:2])
        ),
        InputError,
        r"pos must be \(3, 3\)",
    ),
    "compile_model cpu backend": (
        lambda: __import__("tensornet_fast.md.compile", fromlist=["compile_model"]).compile_model(
            tnf.load_model("default", backend="cpu")
        ),
        Exception,
        "backend='reference'|traceable|cannot be traced",
    ),
    "export_model images": (
        lambda: __import__("tensornet_fast.md.export", fromlist=["export_model"]).export_model(
            "default", "/nonexistent/x.pt2", images=0
        ),
        InputError,
        "images must be an integer 1..8",
    ),
    "export_model precision": (
        lambda: __import__("tensornet_fast.md.export", fromlist=["export_model"]).export_model(
            "default", "/nonexistent/x.pt2", precision=16
        ),
        InputError,
        "precision must be 32, 64 or None",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_error_type_and_message(case):
    call, cls, pattern = BAD_CALLS[case]
    with pytest.raises(cls, match=pattern) as info:
        call()
    if cls is not Exception:
        assert isinstance(info.value, ValueError), type(info.value)


def test_skewed_valid_box_is_accepted():
    """Rows 6, 60.3, 6 A, volume 216 A^3 (the equivalent cubic cell: 6 A): the same lattice,
    so the same energies and forces as the cubic cell, to float64 rounding."""
    model = tnf.load_model("default", precision=64)
    z = torch.tensor([6, 8, 1, 1])
    pos = torch.tensor(
        [[1.0, 1.0, 1.0], [2.2, 1.0, 1.0], [0.5, 1.9, 1.0], [0.5, 0.2, 1.4]], dtype=torch.float64
    )
    cubic = torch.eye(3, dtype=torch.float64) * 6
    skewed = torch.tensor([[6.0, 0, 0], [60.0, 6, 0], [0, 0, 6]], dtype=torch.float64)
    assert abs(float(torch.linalg.det(skewed)) - 216) < 1e-9
    e, f = model(z, pos, box=cubic)
    e_s, f_s = model(z, pos, box=skewed)
    torch.testing.assert_close(e_s, e, rtol=1e-12, atol=0)
    torch.testing.assert_close(f_s, f, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------- 13. numpy arrays and lists
@pytest.mark.parametrize("kind", ["numpy", "list"])
def test_numpy_and_list_inputs(kind):
    model = tnf.load_model("default")
    z, pos, batch = molecule_batch(dtype=torch.float32)
    box = torch.eye(3) * 20.0
    q = torch.zeros(4)
    e, f = model(z, pos, batch, box, q)
    conv = (lambda t: t.numpy()) if kind == "numpy" else (lambda t: t.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        e2, f2 = model(conv(z), conv(pos), conv(batch), conv(box), conv(q))
    assert torch.equal(e, e2) and torch.equal(f, f2)
    # float64 numpy positions into a float32 model are converted (a float64 TENSOR is refused)
    e3, _ = model(z.numpy(), pos.double().numpy(), batch.numpy())
    assert torch.equal(e, e3)
    with pytest.raises(InputError, match="pos is torch.float64 but the model is torch.float32"):
        model(z, pos.double(), batch)
    bad = pos.numpy().copy()
    bad[2, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN or inf \(atoms \[2\]\)"):
        model(z.numpy(), bad, batch.numpy())


# --------------------------------------------------------------- 14. safe checkpoint loading
class _Payload:
    """Unpickling this creates a file: what a crafted checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, small):
    marker = tmp_path / "pwned"
    ckpt = torch.load(small, weights_only=False)
    ckpt["hyper_parameters"]["payload"] = _Payload(str(marker))
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused by the safe loader.*trust_pickle=True"):
        tnf.load_model(path)
    assert not marker.exists(), "the pickle ran code"
    # the explicit opt-in unpickles (and so runs the payload): that is what it is for; the
    # payload's value (a file object) in the hyper-parameters is ignored or refused
    try:
        tnf.load_model(path, trust_pickle=True)
    except (CheckpointError, TypeError, AttributeError):
        pass
    assert marker.exists()


def test_lightning_and_namespace_hyper_parameters_load_safely(tmp_path, small):
    """The hyper-parameter containers torchmd-net / Lightning checkpoints hold: an argparse
    Namespace, Lightning's AttributeDict, numpy scalars."""
    ckpt = torch.load(small, weights_only=False)
    e_ref, f_ref = tnf.load_model(small)(*molecule_batch(dtype=torch.float32))
    hp = dict(ckpt["hyper_parameters"])
    hp["cutoff_upper"] = np.float64(hp["cutoff_upper"])
    containers = [argparse.Namespace(**hp)]
    try:
        from lightning.fabric.utilities.data import AttributeDict

        containers.append(AttributeDict(hp))
    except ImportError:
        pass
    for k, hparams in enumerate(containers):
        path = tmp_path / f"hp{k}.ckpt"
        torch.save({**ckpt, "hyper_parameters": hparams}, path)
        e, f = tnf.load_model(path)(*molecule_batch(dtype=torch.float32))
        assert torch.equal(e, e_ref) and torch.equal(f, f_ref)


def test_checkpoints_need_no_trust():
    """torchmd-net 3.1's files (tests/oracle.py) and the bundled default.ckpt hold no type
    outside torch.load(weights_only=True)'s defaults."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    assert get_unsafe_globals_in_checkpoint(tnf.NAMED_MODELS["default"]) == []


def test_no_parallel_region_exception_aborts(tmp_path):
    """The edge budget trips inside the search's OpenMP region: a Python exception, not an
    aborted process (subprocess: an abort would kill the test runner)."""
    if not tnf.neighbors.compiled_available():
        pytest.skip("compiled extension not built")
    code = (
        "import torch, tensornet_fast as t\n"
        "torch.set_num_threads(2)\n"
        "try:\n"
        "    t.radius_graph(torch.rand(20000, 3) * 3, 5.0)\n"
        "except t.InputError as e:\n"
        "    print('InputError', e)\n"
    )
    env = dict(os.environ, TENSORNET_FAST_MAX_EDGES="100000", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "InputError" in out.stdout and "more than 100000 edges" in out.stdout


def test_pickle_module_is_the_real_one():
    # guard for the test above: _Payload must really run code when unpickled
    assert pickle.loads(pickle.dumps(_Payload(os.devnull))) is not None
