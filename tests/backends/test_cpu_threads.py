"""The cpu backend's thread count per call (backends/cpu/threads.py): one thread for small
systems, no more threads than free cores on a busy machine, torch's setting restored after every
call (also after an error), and the same results (within the tolerance table) whatever count
the rules pick."""

from __future__ import annotations

import pytest
import torch
from oracle import make_checkpoint
from systems import molecule_batch, water_box
from tolerances import assert_close

import tensornet_fast as tnf
from tensornet_fast.backends.cpu import threads as rules


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("threads") / "m.ckpt"
    return make_checkpoint(path, seed=5, precision=32, embedding_dimension=32, num_rbf=16)


def test_rules(two_threads, monkeypatch):
    monkeypatch.setattr(rules, "_busy_cores", lambda: 0)
    monkeypatch.setattr(rules.os, "cpu_count", lambda: 2)
    assert rules.call_threads(rules.SMALL_SYSTEM_ATOMS - 1) == 1
    assert rules.call_threads(rules.SMALL_SYSTEM_ATOMS) == 2
    monkeypatch.setattr(rules, "_busy_cores", lambda: 1)  # another process holds a core
    assert rules.call_threads(10_000) == 1
    monkeypatch.setattr(rules, "_ENABLED", False)
    assert rules.call_threads(10) == 2
    torch.set_num_threads(1)
    monkeypatch.setattr(rules, "_ENABLED", True)
    assert rules.call_threads(10_000) == 1  # never more than torch's setting


def test_load_reading_is_a_count():
    rules._LOAD["t"] = -1.0
    assert rules._busy_cores() >= 0


def test_threads_restored_after_calls_and_errors(ckpt, two_threads):
    model = tnf.load_model(ckpt, backend="cpu")
    z, pos, batch = molecule_batch(dtype=torch.float32)
    model(z, pos, batch)
    assert torch.get_num_threads() == 2
    bad = pos.clone()
    bad[0] = bad[1]  # coincident atoms: InputError inside the call
    with pytest.raises(tnf.InputError):
        model(z, bad, batch)
    assert torch.get_num_threads() == 2


def test_results_do_not_depend_on_the_rules(ckpt, two_threads, monkeypatch):
    """A water box above the small-system size, with the rules on (2 threads on a free machine,
    1 when busy) and off: equal within the float32 tolerances."""
    model = tnf.load_model(ckpt, backend="cpu")
    z, pos, box = water_box(4, seed=2, dtype=torch.float32)
    assert z.shape[0] >= rules.SMALL_SYSTEM_ATOMS
    monkeypatch.setattr(rules, "_ENABLED", False)
    ref_e, ref_f = model(z, pos, box=box)
    monkeypatch.setattr(rules, "_ENABLED", True)
    for busy in (0, 1):
        monkeypatch.setattr(rules, "_busy_cores", lambda b=busy: b)
        e, f = model(z, pos, box=box)
        assert_close(e, ref_e, torch.float32, "energy", f"busy={busy}")
        assert_close(f, ref_f, torch.float32, "forces", f"busy={busy}")
