"""``tensornet-fast screen``: screen molecule libraries (batched, resumable, scale-out)."""

from __future__ import annotations

import argparse
import sys

from .options import BACKEND_HELP, _add_filter_mode


def add_arguments_screen(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="molecule libraries: .sdf/.sd/.mol (RDKit), .xyz/.extxyz, "
        ".smi/.smiles/.txt (one SMILES per line, optional name; 3D conformers by "
        "RDKit ETKDG with hydrogens); read streaming",
    )
    p.add_argument(
        "--model",
        default="default",
        help="checkpoint path, matgl model folder, 'matgl:<name>' or 'default' (bundled)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="results: CSV file, or a Parquet directory dataset if it ends in "
        ".parquet; re-running the same command resumes (ids already there are skipped)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--backend", default="auto", help=BACKEND_HELP)
    _add_filter_mode(p)
    p.add_argument(
        "--precision",
        type=int,
        choices=(32, 64),
        default=None,
        help="run in float32/float64 (default: the checkpoint's)",
    )
    p.add_argument(
        "--batch-atoms",
        type=int,
        default=None,
        help="atom budget per batch (default 1024 on CPU, 16384 on CUDA)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=4096,
        help="at most this many records (or 8x --batch-atoms atoms) are sorted by size "
        "together before packing batches (default 4096)",
    )
    p.add_argument(
        "--relax",
        action="store_true",
        help="also relax each molecule (batched FIRE) and report relaxed_energy, "
        "relaxed_fmax, relax_steps, converged",
    )
    p.add_argument("--fmax", type=float, default=0.05, help="--relax convergence: max force")
    p.add_argument("--max-steps", type=int, default=200, help="--relax: max FIRE steps")
    p.add_argument("--seed", type=int, default=0, help="ETKDG random seed for SMILES (default 0)")
    scale = p.add_argument_group(
        "scale-out (one long-lived model per worker; this process writes OUT)"
    )
    scale.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler of an existing cluster, e.g. tcp://head:8786 (one GPU "
        "per worker: dask-cuda, or dask-jobqueue on Slurm/PBS)",
    )
    scale.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start a Dask LocalCluster with N worker processes on 127.0.0.1",
    )
    scale.add_argument(
        "--devices",
        metavar="LIST",
        help="no scheduler: one process per device, comma-separated "
        "(cuda:0,cuda:1) or 'all' for every visible GPU",
    )
    scale.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        help="records per task in scale-out modes (default 1024)",
    )
    scale.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: cores / workers)",
    )
    p.add_argument(
        "--parse-workers",
        type=int,
        default=None,
        metavar="N",
        help="local run: processes parsing/embedding records (default: cores-1, at "
        "most 8, when there are SMILES inputs, else 0 = a thread)",
    )
    p.add_argument(
        "--rows-per-part",
        type=int,
        default=100_000,
        help="Parquet output: rows per part file (default 100000)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "none"),
        default="auto",
        help="auto (default): a bar with rate and ETA on a terminal, a log line "
        "every 10 s otherwise",
    )


def run_screen(args: argparse.Namespace) -> int:
    from ..screening import ScreenSpec, screen

    if sum(x is not None for x in (args.scheduler, args.workers, args.devices)) > 1:
        print(
            "tensornet-fast screen: use one of --scheduler, --workers, --devices", file=sys.stderr
        )
        return 2
    spec = ScreenSpec(
        model=args.model,
        device=args.device,
        backend=args.backend,
        filter_mode=args.filter_mode,
        precision=args.precision,
        batch_atoms=args.batch_atoms,
        window=args.window,
        relax=args.relax,
        fmax=args.fmax,
        max_steps=args.max_steps,
        seed=args.seed,
        threads=args.threads,
    )
    devices = args.devices.split(",") if args.devices else None
    try:
        stats = screen(
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
    except KeyboardInterrupt:
        print(
            f"tensornet-fast screen: interrupted; {args.out} is valid, re-run the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"tensornet-fast screen: {exc}", file=sys.stderr)
        return 2
    print(stats.summary(), file=sys.stderr)
    return 0
