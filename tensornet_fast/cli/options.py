"""Options and help texts shared by several subcommands."""

from __future__ import annotations

import argparse
import os

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MOLECULES = os.path.join(_PACKAGE, "data", "molecules.xyz")


BACKEND_HELP = (
    "compute backend: auto (cpu on CPU, triton on CUDA when Triton is installed), reference, "
    "cpu, triton; `tensornet-fast info` lists those available here"
)
FILTER_MODE_HELP = (
    "radial filters: auto (default: tabulated on the cpu backend in float32 when the tables' "
    "measured error is within float32 rounding of the exact filter, else exact), exact, "
    "tabulated"
)


def _add_filter_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--filter-mode",
        default="auto",
        choices=("auto", "exact", "tabulated"),
        help=FILTER_MODE_HELP,
    )
