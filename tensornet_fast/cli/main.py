"""``tensornet-fast`` command line. Each subcommand is a module of this package with
``add_arguments_*(parser)`` and ``run_*(args) -> exit code``, registered in ``SUBCOMMANDS``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from . import bench, energies, export, info, screen
from .options import DEFAULT_MOLECULES, HelpFormatter

__all__ = ["DEFAULT_MOLECULES", "SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "energies": (
        "energies, forces and stress of every structure in the input files (CSV or Parquet; "
        "one row per structure, in input order; resumable with --out FILE)",
        energies.add_arguments_energies,
        energies.run_energies,
    ),
    "info": (
        "a checkpoint at a glance: units, trained elements, cutoff, size, backends here",
        info.add_arguments_info,
        info.run_info,
    ),
    "screen": (
        "screen molecule libraries (SDF, XYZ, SMILES): energies, forces, optional relaxation; "
        "batched, resumable, scales out with Dask",
        screen.add_arguments_screen,
        screen.run_screen,
    ),
    "export": (
        "export energy + forces (+ stress) as an AOTInductor package (.pt2) that C++ programs "
        "run without Python (torch::inductor::AOTIModelPackageLoader)",
        export.add_arguments_export,
        export.run_export,
    ),
    "bench": (
        "run a benchmark sweep (bench/sweeps/*.toml) from a source checkout: `python -m bench` "
        "there",
        bench.add_arguments_bench,
        bench.run_bench,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensornet-fast",
        description="Fast, drop-in inference for TensorNet (torchmd-net) potentials.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run) in SUBCOMMANDS.items():
        # bench passes every argument, options included, on to `python -m bench`
        passthrough = {"prefix_chars": "+", "add_help": False} if name == "bench" else {}
        fmt = {} if name == "bench" else {"formatter_class": HelpFormatter}
        p = sub.add_parser(name, help=help_text, description=help_text, **passthrough, **fmt)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:
        # stdout closed early (`... | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
