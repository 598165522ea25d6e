"""``tensornet-fast export``: an AOTInductor package (.pt2) for C++ hosts."""

from __future__ import annotations

import argparse
import sys


def add_arguments_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="checkpoint path or 'default' (bundled)")
    p.add_argument("--out", required=True, help="AOTInductor package to write (.pt2)")
    p.add_argument(
        "--periodic",
        action="store_true",
        help="the package takes a cell (box [3, 3], rows a, b, c) and also returns the stress; "
        "default: isolated molecules",
    )
    p.add_argument(
        "--images",
        type=int,
        default=1,
        help="--periodic: lattice images searched per axis (-N..N); exact for cells whose "
        "plane spacings are >= cutoff / N, with the largest cutoff of the model and its priors "
        "(default 1)",
    )
    p.add_argument(
        "--precision",
        type=int,
        choices=(32, 64),
        default=None,
        help="float32/float64 package (default: the checkpoint's)",
    )
    p.add_argument(
        "--charge",
        type=float,
        default=0.0,
        help="total charge baked into the package (models trained with charge: true)",
    )
    p.add_argument(
        "--lammps",
        action="store_true",
        help="the package of the LAMMPS pair style tensornet (docs/lammps.md): one MPI rank's "
        "atoms and edges in, energy, forces and virial out; runs the cpu backend's compiled "
        "kernels (--backend reference: plain aten ops)",
    )
    p.add_argument(
        "--backend",
        choices=("cpu", "reference"),
        default=None,
        help="--lammps only: cpu (default, compiled kernels) or reference",
    )
    p.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "blocked", "interleaved"),
        help="weight layout of the checkpoint (files from torchmd-net 2.6.2 need interleaved)",
    )


def run_export(args: argparse.Namespace) -> int:
    from ..md.export import export_model

    path = export_model(
        args.model,
        args.out,
        periodic=args.periodic,
        images=args.images,
        charge=args.charge,
        precision=args.precision,
        layout=args.layout,
        lammps=args.lammps,
        backend=args.backend,
        verbose=True,  # one line per stage, with the elapsed time, on stderr
    )
    if args.lammps:
        print(f"wrote {path}; in LAMMPS: pair_style tensornet {path}", file=sys.stderr)
    else:
        print(f"wrote {path}; run it from C++ with examples/cpp/run_exported.cpp", file=sys.stderr)
    return 0
