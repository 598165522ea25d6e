"""TensorNetCalculator's contract beyond the physics: shared by threads without swapping
results (and the model itself thread-safe), load_model's keywords, unknown keywords refused,
the deprecated ``dtype=`` still working for one release."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import read
from paths import PACKAGE_DATA

import tensornet_fast as tnf
from tensornet_fast.integrations.ase import TensorNetCalculator

N_THREADS, N_CALLS = 4, 20


@pytest.fixture(scope="module")
def model():
    return tnf.load_model("default")


@pytest.fixture(scope="module")
def frames():
    return read(f"{PACKAGE_DATA}/molecules.xyz", ":")


def _in_threads(work) -> list:
    errors: list = []

    def run(k):
        try:
            work(k, errors)
        except Exception as exc:  # a crash in a thread is a failure too
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_one_calculator_shared_by_threads_gives_each_call_its_own_result(model, frames):
    """4 threads x 20 calls on one calculator: every energy and force array equals the
    single-threaded one (before the lock, 12 of 80 calls got another molecule's energy)."""
    calc = TensorNetCalculator(model)
    ref = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        ref.append((a.get_potential_energy(), a.get_forces()))

    def work(k, errors):
        for i in range(N_CALLS):
            j = (5 * k + i) % len(frames)
            a = frames[j].copy()
            a.calc = calc
            e, f = a.get_potential_energy(), a.get_forces()
            if e != ref[j][0] or f.shape != ref[j][1].shape or not np.array_equal(f, ref[j][1]):
                errors.append((j, e, ref[j][0]))

    assert _in_threads(work) == []


def test_model_is_thread_safe(model, frames):
    """The model itself needs no lock: concurrent calls give the single-threaded numbers."""

    def call(atoms):
        e, f = model(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions).float())
        return e.item(), f

    ref = [call(a) for a in frames]

    def work(k, errors):
        for i in range(N_CALLS):
            j = (7 * k + i) % len(frames)
            e, f = call(frames[j])
            if e != ref[j][0] or not torch.equal(f, ref[j][1]):
                errors.append((j, e, ref[j][0]))

    assert _in_threads(work) == []


def test_load_model_keywords(frames):
    atoms = frames[4].copy()
    calc = TensorNetCalculator("default", precision=64, backend="reference", filter_mode="auto")
    assert calc.model.dtype == torch.float64 and calc.model.backend == "reference"
    atoms.calc = calc
    ref = tnf.load_model("default", precision=64, backend="reference")
    e, _ = ref(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions))
    assert atoms.get_potential_energy() == pytest.approx(e.item(), rel=1e-12)
    # a hyper-parameter override reaches load_model (a shorter cutoff changes the energy)
    short = TensorNetCalculator("default", cutoff_upper=1.2, backend="reference", layout="blocked")
    atoms.calc = short
    assert short.model.config.cutoff_upper == 1.2
    assert abs(atoms.get_potential_energy() - e.item()) > 1e-3
    energy_only = TensorNetCalculator("default", derivative=False, backend="reference")
    atoms.calc = energy_only
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_forces()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"precison": 64}, "precison"),  # a typo is not silently ignored
        ({"dtype_": torch.float64}, "dtype_"),
        ({"precision": 16}, "32 or 64"),
        ({"energy_unit": 0.0}, "energy_unit"),
        ({"length_unit": float("nan")}, "length_unit"),
        ({"device": "gpu0"}, "device"),
        ({"precision": 32, "dtype": torch.float64}, "disagree"),
    ],
)
def test_bad_keywords_raise_input_error(kwargs, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(tnf.InputError, match=words):
            TensorNetCalculator("default", **kwargs)


def test_loaded_model_refuses_loading_keywords(model):
    for kwargs in ({"backend": "reference"}, {"remove_ref_energy": False}, {"layout": "blocked"}):
        with pytest.raises(tnf.InputError, match="loaded model"):
            TensorNetCalculator(model, **kwargs)


def test_dtype_still_works_with_a_deprecation_warning():
    atoms = molecule("H2O")
    with pytest.warns(DeprecationWarning, match="precision="):
        calc = TensorNetCalculator("default", dtype=torch.float64)
    assert calc.model.dtype == torch.float64
    atoms.calc = calc
    ref = TensorNetCalculator("default", precision=64)
    b = atoms.copy()
    b.calc = ref
    assert atoms.get_potential_energy() == b.get_potential_energy()
