"""``tensornet-fast energies``: energies (and forces, stress) of every structure in the inputs.

The same pipeline as ``screen`` (readers, batching, writer, runner in
:mod:`tensornet_fast.screening`): one row per record with a status, bad records reported and
skipped, flushed per batch, resumable with ``--out FILE``. What it adds: periodic cells
(extxyz ``Lattice=``, cif, POSCAR, ...), ``--forces``, ``--stress``, rows in input order."""

from __future__ import annotations

import argparse
import sys

from .options import (
    DEFAULT_MOLECULES,
    INPUTS_HELP,
    add_model_options,
    add_run_options,
    add_unit_options,
    check_numbers,
    run_job,
    spec_kwargs,
)


def add_arguments_energies(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        default=[DEFAULT_MOLECULES],
        metavar="INPUT",
        help=INPUTS_HELP + " (default: the 12 bundled molecules)",
    )
    p.add_argument(
        "--out",
        default="-",
        help="CSV file, or a directory ending in .parquet; '-' = stdout. An existing file is "
        "resumed (rows already there are skipped) if it is this command's output with the "
        "same columns, and refused otherwise; inputs are never overwritten (default: -)",
    )
    p.add_argument(
        "--forces",
        action="store_true",
        help="add forces_eV_per_A: per-atom forces in eV/Angstrom, x y z per atom in input "
        "order, space-separated",
    )
    p.add_argument(
        "--stress",
        action="store_true",
        help="add stress_eV_per_A3: the stress of periodic structures in eV/Angstrom^3, Voigt "
        "order xx yy zz yz xz xy, (1/V) dE/d(strain) as ASE's get_stress; empty for molecules",
    )
    add_model_options(p)
    add_unit_options(p)
    add_run_options(p)


def run_energies(args: argparse.Namespace) -> int:
    from ..screening import ScreenSpec

    problem = check_numbers(args)
    if problem:
        print(f"tensornet-fast energies: {problem}", file=sys.stderr)
        return 2
    spec = ScreenSpec(
        **spec_kwargs(args),
        forces=args.forces,
        stress=args.stress,
        periodic=True,
        ordered=True,
    )
    return run_job("energies", args.inputs, args.out, spec, progress=args.progress)
