"""Every bench script and the driver run once at --tiny size into a temporary CSV (seconds):
CI thereby executes all benchmark code. Scripts are discovered (bench/bench_*.py), so new ones
are covered without editing this file."""

from __future__ import annotations

import csv
import glob
import importlib
import importlib.util
import json
import os

import pytest
import torch
from paths import ROOT

from bench import harness

BENCH = os.path.join(ROOT, "bench")
SCRIPTS = sorted(os.path.basename(p)[6:-3] for p in glob.glob(os.path.join(BENCH, "bench_*.py")))


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # worker processes inherit this; an oversubscribed OpenMP pool is 10-50x slower on a busy CI box
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _check_rows(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == harness.COLUMNS
        rows = list(reader)
    assert rows, f"no rows in {path}"
    for r in rows:
        for col in ("date", "git_sha", "device", "torch", "benchmark", "implementation"):
            assert r[col], (col, r)
        med = float(r["median_s"])
        assert med > 0 and float(r["p20_s"]) <= med <= float(r["p80_s"]), r
        assert int(r["repeats"]) >= 1
        if r["warmup_s"]:
            assert float(r["warmup_s"]) >= 0
    return rows


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_tiny(script, tmp_path):
    out = tmp_path / "rows.csv"
    mod = importlib.import_module(f"bench.bench_{script}")
    assert mod.main(["--tiny", "--csv", str(out), "--device", "cpu"]) == 0
    rows = _check_rows(str(out))
    if script == "model":
        from bench.bench_model import default_implementations

        got = {f"{r['implementation']}:{r['backend']}" for r in rows}
        assert got == set(default_implementations()), "an implementation produced no row"
        for r in rows:
            assert int(r["atoms"]) > 0 and int(r["edges"]) > int(r["atoms"])
            assert float(r["ns_per_atom"]) > 0 and float(r["gflops"]) > 0
        tmdn = {r["backend"]: r["notes"] for r in rows if r["implementation"] == "torchmd-net"}
        assert "tmdn_opt=True" in tmdn["default"] and "tmdn_opt=False" in tmdn["pure"]
    if script == "md_step":
        import tensornet_fast as tnf

        got = {(r["implementation"], r["backend"], r["mode"]) for r in rows}
        want = {("model", b, "eager") for b in tnf.available_backends()}
        want.add(("md-step", "reference", "eager"))
        if importlib.util.find_spec("torchmdnet") is not None:
            want.add(("torchmd-net", "default", "eager"))
        assert want <= got, f"missing rows: {want - got}"
        assert all(r["system"] == "biphenyl_22" and r["atoms"] == "22" for r in rows)


def test_roofline_and_plots_tiny(tmp_path):
    from bench import plots, roofline

    out = tmp_path / "rows.csv"
    assert importlib.import_module("bench.bench_stages").main(["--tiny", "--csv", str(out)]) == 0
    assert roofline.main(["--tiny", "--csv", str(out), "--out-dir", str(tmp_path)]) == 0
    rows = _check_rows(str(out))
    ceilings = {r["mode"]: r for r in rows if r["benchmark"] == "ceiling"}
    assert float(ceilings["memcpy"]["gbps"]) > 0 and float(ceilings["gemm"]["gflops"]) > 0
    assert (tmp_path / "ROOFLINE.md").read_text().startswith("# Roofline")
    assert plots.main(["--csv", str(out), "--out-dir", str(tmp_path), "--include-tiny"]) == 0
    assert (tmp_path / "stages.png").stat().st_size > 1000


def test_work_model_matches_spec():
    """docs/spec.md: the filter MLP is K.F + 2F^2 + 6F^2 ~ 135k multiply-adds per edge and layer."""
    from bench.roofline import model_work

    w = model_work(128, 32, 1, 1.0)
    filt = w.terms["edge x layer: filter MLP"]
    assert abs(filt - 2 * (32 * 128 + 8 * 128**2) - (6 * 128 * 4 + 3 * 128)) < 1e-6
    assert 2 * 135_000 < filt < 2 * 140_000


def test_driver_tiny_sweep(tmp_path):
    from bench.driver import main

    sweep = tmp_path / "sweep.json"
    sweep.write_text(
        json.dumps(
            {
                "threads": 1,
                "run": [
                    {"script": "stages"},
                    {"script": "no_such_script"},  # missing scripts are reported and skipped
                    {"script": "roofline"},
                ],
            }
        )
    )
    assert main([str(sweep), "--tiny", "--out-dir", str(tmp_path)]) == 0
    rows = _check_rows(str(tmp_path / "results.csv"))
    assert {r["benchmark"] for r in rows} == {"model_stage", "ceiling"}
    assert (tmp_path / "ROOFLINE.md").exists()


def test_cli_has_bench_subcommand():
    from tensornet_fast.cli import SUBCOMMANDS, build_parser

    assert "bench" in SUBCOMMANDS
    args = build_parser().parse_args(["bench", "--list"])
    assert args._run(args) == 0


def test_bench_matgl_profile_tiny(capfd):
    """``bench_matgl.py --profile`` (docs/matgl.md "Where our time goes") runs and names the
    parts of the call for both systems."""
    pytest.importorskip("matgl")
    from bench import bench_matgl

    assert bench_matgl.main(["--profile", "--tiny"]) == 0
    out = capfd.readouterr().out
    for want in ("NaCl (64 atoms", "MgO (16 atoms", "interaction layers, backward", "ms thread"):
        assert want in out, out
