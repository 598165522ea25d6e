"""bench/gpu_check.sh, the GPU first-contact check, tested here without a GPU: its dry run (the
same driver and steps on CPU: Triton interpreter, tiny systems, the CUDA radius graph's kernels
run on the host) must finish, write its files and pass its checks; the goal lines must come out
right for given numbers."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from paths import ROOT

sys.path.insert(0, ROOT)
from bench import gpu_check  # noqa: E402

STEPS = ["env", "build", "jit", "check", "nlist", "graphs", "bench_small", "bench_12k",
         "bench_100k", "bench_1m"]  # fmt: skip


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.triton
def test_dry_run_writes_summary_and_rows(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TNF_TRITON_CONFIG")}
    env["PYTHON"] = sys.executable
    out = tmp_path / "out"
    res = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1500)  # fmt: skip
    log = res.stdout + res.stderr
    assert sorted(os.listdir(out)) == ["checks.csv", "log.txt", "summary.txt", "timings.csv"]
    summary = (out / "summary.txt").read_text()
    assert "gpu_check summary (DRY RUN" in summary, log[-3000:]
    for step in STEPS:  # every step ran, in time
        assert f"  {step:12s} OK" in summary, (step, summary)
    checks = _rows(out / "checks.csv")
    failed = [c for c in checks if c["status"] == "FAIL"]
    assert not failed, failed
    names = " | ".join(c["name"] for c in checks)
    expected = ("vs torchmd-net: energy", "vs reference fp64: forces",
                "same pairs, shifts, order", "overflow raises", "MDStep eager",
                "extension tensornet_fast._C imports")  # fmt: skip
    for what in expected:
        assert what in names, what
    timings = _rows(out / "timings.csv")
    kinds = {(r["backend"], r["mode"]) for r in timings}
    assert {("triton", "tabulated"), ("triton", "exact"), ("reference", "exact"),
            ("radius_graph", "compiled")} <= kinds, kinds  # fmt: skip
    assert {"md-step eager", "model"} <= {r["implementation"] for r in timings}
    assert all(float(r["ns_per_atom"]) > 0 for r in timings)
    assert "goals:" in summary and "22-atom MD step" in summary
    assert res.returncode == 0, log[-3000:]


def _row(**kw):
    base = dict(implementation="tensornet_fast", backend="triton", mode="tabulated",
                system="water_99000", atoms=99000, median_s=1.0, ns_per_atom=50.0,
                peak_mem_mb=float("nan"), notes="")  # fmt: skip
    return {**base, **kw}


LAT = "latency_us=42.0"


def test_goal_lines():
    rows = [
        _row(ns_per_atom=50.0),
        _row(mode="exact", ns_per_atom=170.0, median_s=2.0),
        _row(system="water_1000000", atoms=1000000, ns_per_atom=55.0, peak_mem_mb=70000.0),
        _row(implementation="md-step cuda-graph", system="biphenyl_22", atoms=22, notes=LAT),
        _row(backend="radius_graph", mode="compiled", ns_per_atom=6.0),
        _row(backend="reference", mode="exact", median_s=30.0),
    ]
    lines = "\n".join(gpu_check.goals(rows, dry=False))
    assert "PASS    tabulated 50.0 ns/atom/step at 99000 atoms" in lines
    assert "FAIL    exact 170.0 ns/atom/step" in lines
    assert "PASS    tabulated 55.0 ns/atom/step at 1000000 atoms" in lines
    assert "PASS    peak memory 73.4 GB at 1000000 atoms" in lines
    assert "PASS    22-atom MD step with CUDA graph 42.0 us" in lines
    assert "FAIL    neighbour list 6.00 ns/atom" in lines
    assert "15.0x the reference backend" in lines
    empty = "\n".join(gpu_check.goals([], dry=False))
    assert empty.count("NOT RUN") == 6, empty


def test_plan_fits_eight_minutes():
    """The planned step times add up to well under the 480 s budget and the deadline leaves
    room for the summary; every step of the driver has a plan."""
    assert sum(p for p, _ in gpu_check.PLAN.values()) <= 0.8 * gpu_check.BUDGET_S
    assert gpu_check.DEADLINE_S < gpu_check.BUDGET_S
    assert set(gpu_check.PLAN) == set(STEPS)
