"""Every Triton kernel compiles for an H100 (sm_90) with Triton's real GPU compiler, on this
machine without a GPU (kernels/compile_check.py): the interpreter lane cannot see type or
lowering errors that only the GPU compiler raises. float32 only in CI (float64 was checked by
hand, `python -m tensornet_fast.kernels.compile_check`: ~13 s of compile per kernel variant)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from paths import ROOT

pytestmark = pytest.mark.triton
pytest.importorskip("triton", reason="the triton extra is part of the test install")


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run(
        [sys.executable, "-m", "tensornet_fast.kernels.compile_check", "--dtypes", "fp32"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert res.stdout.count("ok ") >= 15 and "FAIL" not in res.stdout
