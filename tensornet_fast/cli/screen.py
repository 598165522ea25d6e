"""``tensornet-fast screen``: screen molecule libraries (batched, resumable, scale-out)."""

from __future__ import annotations

import argparse
import sys

from .options import (
    INPUTS_HELP,
    add_model_options,
    add_run_options,
    add_unit_options,
    check_numbers,
    run_job,
    spec_kwargs,
)


def add_arguments_screen(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=INPUTS_HELP + "; molecules only (periodic structures get an error row: use "
        "`tensornet-fast energies`)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="results: a CSV file, or a Parquet directory dataset if it ends in .parquet. "
        "Re-running the same command resumes (ids already there are skipped); an existing "
        "file that is not this command's output with the same columns is refused, and inputs "
        "are never overwritten. With --relax the relaxed geometries go beside it "
        "(OUT.relaxed.extxyz, OUT's .csv/.parquet suffix replaced)",
    )
    add_model_options(p)
    add_unit_options(p)
    add_run_options(p)
    p.add_argument(
        "--window",
        type=int,
        default=4096,
        metavar="N",
        help="records sorted by size together before packing batches (at most N records or "
        "8 x --batch-atoms atoms)",
    )
    relax = p.add_argument_group("relaxation")
    relax.add_argument(
        "--relax",
        action="store_true",
        help="also relax each molecule (batched FIRE, ASE's rule and defaults) and report "
        "relaxed_energy_eV, relaxed_fmax_eV_per_A, relax_steps, converged; the relaxed "
        "geometries are written to OUT.relaxed.extxyz",
    )
    relax.add_argument(
        "--fmax",
        type=float,
        default=0.05,
        metavar="EV_PER_A",
        help="--relax convergence: largest atomic force, in eV/Angstrom",
    )
    relax.add_argument(
        "--max-steps", type=int, default=200, metavar="N", help="--relax: most FIRE steps"
    )
    scale = p.add_argument_group(
        "scale-out (one long-lived model per worker; this process writes OUT)"
    )
    scale.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler of an existing cluster, e.g. tcp://head:8786 (one GPU per worker: "
        "dask-cuda, or dask-jobqueue on Slurm/PBS) (default: none, run here)",
    )
    scale.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start a Dask LocalCluster with N worker processes on 127.0.0.1 "
        "(default: none, run here)",
    )
    scale.add_argument(
        "--devices",
        metavar="LIST",
        help="no scheduler: one process per device, comma-separated (cuda:0,cuda:1) or 'all' "
        "for every visible GPU (default: none, run here)",
    )
    scale.add_argument(
        "--shard-size", type=int, default=1024, metavar="N", help="records per scale-out task"
    )
    scale.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads per process (default: cores / workers)",
    )
    p.add_argument(
        "--parse-workers",
        type=int,
        default=None,
        metavar="N",
        help="local run: processes parsing/embedding records (default: cores-1, at most 8, "
        "when there are SMILES inputs, else 0 = a thread)",
    )
    p.add_argument(
        "--rows-per-part",
        type=int,
        default=100_000,
        metavar="N",
        help="Parquet output: rows per part file",
    )


def run_screen(args: argparse.Namespace) -> int:
    from ..screening import ScreenSpec

    problem = check_numbers(args)
    if sum(x is not None for x in (args.scheduler, args.workers, args.devices)) > 1:
        problem = "use one of --scheduler, --workers, --devices"
    if problem:
        print(f"tensornet-fast screen: {problem}", file=sys.stderr)
        return 2
    spec = ScreenSpec(
        **spec_kwargs(args),
        window=args.window,
        relax=args.relax,
        fmax=args.fmax,
        max_steps=args.max_steps,
        threads=args.threads,
    )
    devices = args.devices.split(",") if args.devices else None
    return run_job(
        "screen",
        args.inputs,
        args.out,
        spec,
        scheduler=args.scheduler,
        workers=args.workers,
        devices=devices,
        shard_size=args.shard_size,
        progress=args.progress,
        rows_per_part=args.rows_per_part,
        parse_workers=args.parse_workers,
    )
