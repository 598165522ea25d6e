"""``tensornet-fast export``: an AOTInductor package (.pt2) for C++ hosts.

The package is compiled into a temporary file beside ``--out`` and renamed over it only when
complete; an existing ``--out`` is replaced only if it is a package this command wrote (its
metadata carries ``tensornet_fast_export``), and never if it is the checkpoint itself."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile

from .options import add_layout


def add_arguments_export(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="default", help="checkpoint (.ckpt) path, or 'default' (bundled)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="AOTInductor package to write (.pt2); written to a temporary file and renamed "
        "when complete; an existing file is replaced only if this command wrote it",
    )
    p.add_argument(
        "--periodic",
        action="store_true",
        help="the package takes a cell (box [3, 3], rows a, b, c, Angstrom for the bundled "
        "model) and also returns the stress; without it: isolated molecules",
    )
    p.add_argument(
        "--images",
        type=int,
        default=1,
        help="--periodic: lattice images searched per axis (-N..N); exact for cells whose "
        "plane spacings are >= cutoff / N, with the largest cutoff of the model and its priors",
    )
    p.add_argument(
        "--precision",
        type=int,
        choices=(32, 64),
        default=None,
        help="float32/float64 package (default: the checkpoint's precision)",
    )
    p.add_argument(
        "--charge",
        type=float,
        default=0.0,
        help="total charge in elementary charges, baked into the package (models trained with "
        "charge: true; ignored by others)",
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
    add_layout(p)


def is_export_package(path: str) -> bool:
    """Whether ``path`` is a .pt2 written by ``export_model`` (metadata with our key)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith("_metadata.json"):
                    if "tensornet_fast_export" in json.loads(zf.read(name) or b"{}"):
                        return True
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return False


def check_out(out: str, model: str) -> str | None:
    """Why ``out`` may not be written (None: it may)."""
    from ..model import NAMED_MODELS
    from ..screening.writer import _same_file

    if os.path.isdir(out):
        return f"--out {out} is a directory; give a file name such as model.pt2"
    model_path = NAMED_MODELS.get(model, model)
    if os.path.exists(model_path) and _same_file(out, model_path):
        return f"--out {out} is the checkpoint {model}: choose another output file"
    if os.path.exists(out) and not is_export_package(out):
        return (
            f"{out} exists and is not a package written by `tensornet-fast export`; it is left "
            "untouched: choose another --out or move it away"
        )
    return None


def run_export(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError, InputError

    def say(msg: str) -> None:
        print(f"tensornet-fast export: {msg}", file=sys.stderr, flush=True)

    problem = check_out(args.out, args.model)
    if args.images < 1:
        problem = f"--images must be at least 1, got {args.images}"
    if problem:
        say(problem)
        return 2
    t0 = time.perf_counter()
    say(f"loading {args.model} ...")
    from ..md.export import export_model

    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(args.out)}.{os.getpid()}.tmp.pt2")
    try:
        path = export_model(
            args.model,
            tmp,
            periodic=args.periodic,
            images=args.images,
            charge=args.charge,
            precision=args.precision,
            layout=args.layout,
            lammps=args.lammps,
            backend=args.backend,
            log=say,
        )
        os.replace(path, args.out)  # whole package or nothing
    except KeyboardInterrupt:
        say(f"interrupted; {args.out} unchanged. Re-run the command to export again")
        return 130
    except (CheckpointError, InputError, ValueError, OSError) as exc:
        say(str(exc))
        return 2
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if args.lammps:
        use = f"in LAMMPS: pair_style tensornet {args.out}"
    else:
        use = "run it from C++ with examples/cpp/run_exported.cpp"
    say(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s; {use}")
    return 0
