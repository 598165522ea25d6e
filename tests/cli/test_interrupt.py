"""Ctrl-C: SIGINT to a running command (alone, or to its whole process group as a terminal
sends it) ends it with exit code 130, "re-run ... to resume", a valid output file and no
traceback from it or its helper processes; the re-run completes the output without
duplicates. Subprocess runs: slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from ase.io import read
from paths import ROOT

from tensornet_fast.cli import DEFAULT_MOLECULES, main
from tensornet_fast.screening.writer import read_results

pytestmark = pytest.mark.slow


def _start(args, group: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tensornet_fast.cli", *map(str, args), "--progress", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=group
    )


def _wait_for_lines(path, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.2)


def test_sigint_ends_with_resume_message_and_valid_output(tmp_path):
    """Ctrl-C (SIGINT to the process) mid-run: exit 130, no traceback, 're-run to resume',
    every line of the CSV whole; the re-run completes it without duplicates."""
    path = tmp_path / "many.xyz"
    path.write_text(open(DEFAULT_MOLECULES).read() * 300)  # 3600 structures
    n = 300 * len(read(DEFAULT_MOLECULES, index=":"))
    out = tmp_path / "r.csv"
    proc = _start(["energies", path, "--out", out, "--batch-atoms", "40"])
    _wait_for_lines(out, 20)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "re-run the same command to resume" in err.lower()
    rows = read_results(str(out))
    assert 0 < len(rows) < n
    assert all(r["status"] == "ok" and r["energy_eV"] is not None for r in rows)
    rc = main(["energies", str(path), "--out", str(out), "--batch-atoms", "400"])
    assert rc == 0
    ids = [r["id"] for r in read_results(str(out))]
    assert len(ids) == len(set(ids)) == n


def test_ctrl_c_to_the_process_group_with_parser_processes(tmp_path):
    """screen on SMILES runs parser processes; Ctrl-C reaches all of them (process group):
    they ignore it from birth (no traceback from a half-imported helper), the main process
    stops them and says how to resume."""
    smi = tmp_path / "lib.smi"
    smi.write_text("".join(f"{s}C m{k}\n" for k, s in enumerate(["CCO", "c1ccccc1O"] * 400)))
    out = tmp_path / "s.csv"
    proc = _start(["screen", smi, "--out", out, "--parse-workers", "1"], group=True)
    _wait_for_lines(out, 1)  # the header: the run is set up, the helper is starting
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "re-run the same command to resume" in err.lower()
    ids = [r["id"] for r in read_results(str(out))]
    assert len(ids) == len(set(ids))
