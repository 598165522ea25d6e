"""``tensornet-fast`` command line. Each subcommand is a module of this package with
``add_arguments_*(parser)`` and ``run_*(args) -> exit code``, registered in ``SUBCOMMANDS``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import bench, energies, export, info, screen
from .options import DEFAULT_MOLECULES

__all__ = ["DEFAULT_MOLECULES", "SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "energies": (
        "energies and forces of every structure in the input files (CSV)",
        energies.add_arguments_energies,
        energies.run_energies,
    ),
    "info": (
        "print a checkpoint's hyper-parameters and the available backends",
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
        p = sub.add_parser(name, help=help_text, description=help_text, **passthrough)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
