"""The sweep driver: ``python -m bench SWEEP`` or ``tensornet-fast bench SWEEP``.

A sweep file (TOML or JSON) lists runs; each run names a script ``bench/bench_<script>.py`` (or
``roofline``) and its own arguments (scenarios x implementations x sizes live there). The driver
adds the shared flags every bench script accepts (``--csv``, ``--device``, ``--tiny``), runs them
in order, then rebuilds the roofline table and the plots from the CSV.

    [[run]]
    script = "model"
    args = ["--scenario", "water", "--sizes", "192,648", "--layers", "1,2"]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

from bench import harness

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SWEEP = os.path.join(HERE, "sweeps", "cpu.toml")


def load_sweep(path: str) -> list[dict]:
    if path.endswith(".json"):
        with open(path) as fh:
            data = json.load(fh)
    else:
        import tomllib

        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    runs = data.get("run", [])
    for r in runs:
        r.setdefault("threads", data.get("threads"))
    for r in runs:
        if "script" not in r:
            raise ValueError(f"{path}: every [[run]] needs a 'script' (got {r})")
        r.setdefault("args", [])
        r.setdefault("tiny_args", r["args"])
    return runs


def available_scripts() -> list[str]:
    files = os.listdir(HERE)
    names = sorted(f[6:-3] for f in files if f.startswith("bench_") and f.endswith(".py"))
    return names + ["roofline"]


def _module(script: str):
    name = "bench.roofline" if script == "roofline" else f"bench.bench_{script}"
    return importlib.import_module(name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sweep",
        nargs="?",
        default=DEFAULT_SWEEP,
        help=f"sweep file (.toml/.json), default {os.path.relpath(DEFAULT_SWEEP)}",
    )
    p.add_argument("--tiny", action="store_true", help="every run at its tiny size (smoke test)")
    p.add_argument("--csv", default=None, help="CSV to append to (default: OUT_DIR/results.csv)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--out-dir", default=None, help="folder for CSV, PNG and markdown (default: bench/results)"
    )
    p.add_argument("--only", default=None, help="comma list of script names to run from the sweep")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for every run and worker (default: the sweep's 'threads', "
        "else torch's default); sets OMP_NUM_THREADS for the worker processes",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--list", action="store_true", help="list the bench scripts and exit")


def run(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(available_scripts()))
        return 0
    out_dir = os.path.abspath(args.out_dir or os.path.dirname(harness.RESULTS_CSV))
    os.makedirs(out_dir, exist_ok=True)
    csv = os.path.abspath(args.csv or os.path.join(out_dir, "results.csv"))
    runs = load_sweep(args.sweep)
    threads = args.threads or (runs[0]["threads"] if runs else None)
    if threads:
        # Oversubscribed OpenMP threads spin at barriers: on a shared machine 2 threads can be
        # 50x slower than 1. Set it for this process and every worker it starts.
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    only = set(args.only.split(",")) if args.only else None
    failures = 0
    for k, r in enumerate(runs):
        if only and r["script"] not in only:
            continue
        if r["script"] not in available_scripts():
            print(
                f"[{k}] {r['script']}: no bench/bench_{r['script']}.py here, skipped",
                file=sys.stderr,
            )
            continue
        argv = list(r["tiny_args"] if args.tiny else r["args"])
        argv += ["--csv", csv, "--device", args.device] + (["--tiny"] if args.tiny else [])
        print(f"[{k}] {r['script']} {' '.join(argv)}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            rc = _module(r["script"]).main(argv)
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 1
        print(f"[{k}] {r['script']} exit {rc} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        failures += rc != 0
    if not args.no_plots:
        from bench import plots

        plots.main(["--csv", csv, "--out-dir", out_dir] + (["--include-tiny"] if args.tiny else []))
    print(f"results: {out_dir}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
