"""``tensornet-fast`` command line. Subcommands register themselves in ``SUBCOMMANDS``:
each entry maps a name to ``(add_arguments(parser), run(args) -> exit code)``."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Iterator

from ..errors import InputError

DEFAULT_MOLECULES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "molecules.xyz")


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


def _add_energies_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        default=[DEFAULT_MOLECULES],
        help="structure files ASE can read (xyz, extxyz, sdf, pdb, ...); "
        "default: the bundled molecule set",
    )
    p.add_argument("--model", default="default", help="checkpoint path or 'default' (bundled)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help=BACKEND_HELP)
    _add_filter_mode(p)
    p.add_argument(
        "--precision",
        type=int,
        choices=(32, 64),
        default=None,
        help="run in float32/float64 (default: the checkpoint's)",
    )
    p.add_argument("--out", default="-", help="CSV output file ('-' = stdout)")
    p.add_argument("--forces", action="store_true", help="also write per-atom forces")


def _frames(paths: list[str]) -> Iterator[tuple[str, object]]:
    from ase.io import iread

    for path in paths:
        for k, atoms in enumerate(iread(path, index=":")):
            yield f"{os.path.basename(path)}:{k}", atoms


def _run_energies(args: argparse.Namespace) -> int:
    import torch

    from ..model import load_model

    overrides = {} if args.precision is None else {"precision": args.precision}
    model = load_model(
        args.model,
        device=args.device,
        backend=args.backend,
        filter_mode=args.filter_mode,
        **overrides,
    )
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    writer = csv.writer(out)
    header = ["id", "formula", "n_atoms", "energy", "fmax", "status"]
    writer.writerow(header + (["forces"] if args.forces else []))
    n_ok = n_bad = 0
    start = time.perf_counter()
    for ident, atoms in _frames(args.inputs):
        z = torch.as_tensor(atoms.numbers, dtype=torch.long, device=args.device)
        pos = torch.as_tensor(atoms.positions, dtype=model.dtype, device=args.device)
        box = None
        if atoms.pbc.any():
            box = torch.as_tensor(atoms.cell.array, dtype=model.dtype, device=args.device)
        row = [ident, atoms.get_chemical_formula(), len(atoms)]
        try:
            energy, forces = model(z, pos, box=box)
        except InputError as exc:
            writer.writerow(row + ["", "", f"error: {exc}"])
            n_bad += 1
            continue
        fmax = forces.norm(dim=1).max().item()
        extra = [" ".join(f"{v:.8g}" for v in forces.flatten().tolist())] if args.forces else []
        writer.writerow(row + [f"{energy.item():.10g}", f"{fmax:.6g}", "ok"] + extra)
        n_ok += 1
    if out is not sys.stdout:
        out.close()
    elapsed = time.perf_counter() - start
    print(
        f"# {n_ok} structures ok, {n_bad} failed, {elapsed:.2f} s, model {args.model} "
        f"({model.config.embedding_dimension} channels, {model.config.num_layers} layers, "
        f"backend {model.backend})",
        file=sys.stderr,
    )
    return 0


def _add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="checkpoint path or 'default'")
    p.add_argument("--layout", default="auto", choices=("auto", "blocked", "interleaved"))


def _run_info(args: argparse.Namespace) -> int:
    from ..backends import available_backends
    from ..model import load_model

    model = load_model(args.model, layout=args.layout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model}\n{model.config}\nparameters: {n_params}")
    print(f"backends available here: {', '.join(available_backends())}")
    return 0


def _add_export_args(p: argparse.ArgumentParser) -> None:
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
        "--layout",
        default="auto",
        choices=("auto", "blocked", "interleaved"),
        help="weight layout of the checkpoint (files from torchmd-net 2.6.2 need interleaved)",
    )


def _run_export(args: argparse.Namespace) -> int:
    from ..md.export import export_model

    path = export_model(
        args.model,
        args.out,
        periodic=args.periodic,
        images=args.images,
        charge=args.charge,
        precision=args.precision,
        layout=args.layout,
        verbose=True,
    )
    print(f"wrote {path}; run it from C++ with examples/cpp/run_exported.cpp", file=sys.stderr)
    return 0


def _add_screen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="molecule libraries: .sdf/.sd/.mol (RDKit), .xyz/.extxyz, "
        ".smi/.smiles/.txt (one SMILES per line, optional name; 3D conformers by "
        "RDKit ETKDG with hydrogens); read streaming",
    )
    p.add_argument("--model", default="default", help="checkpoint path or 'default' (bundled)")
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


def _run_screen(args: argparse.Namespace) -> int:
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


def _bench_driver():
    """bench/ ships with the source tree, not the wheel: import it from the checkout."""
    try:
        from bench import driver
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.isfile(os.path.join(root, "bench", "driver.py")):
            return None
        sys.path.insert(0, root)
        from bench import driver
    return driver


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    driver = _bench_driver()
    if driver is not None:
        driver.add_arguments(p)


def _run_bench(args: argparse.Namespace) -> int:
    driver = _bench_driver()
    if driver is None:
        raise SystemExit("tensornet-fast bench needs a source checkout (bench/ is not installed)")
    return driver.run(args)


SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "energies": (
        "energies and forces of every structure in the input files (CSV)",
        _add_energies_args,
        _run_energies,
    ),
    "info": (
        "print a checkpoint's hyper-parameters and the available backends",
        _add_info_args,
        _run_info,
    ),
    "screen": (
        "screen molecule libraries (SDF, XYZ, SMILES): energies, forces, optional relaxation; "
        "batched, resumable, scales out with Dask",
        _add_screen_args,
        _run_screen,
    ),
    "export": (
        "export energy + forces (+ stress) as an AOTInductor package (.pt2) that C++ programs "
        "run without Python (torch::inductor::AOTIModelPackageLoader)",
        _add_export_args,
        _run_export,
    ),
    "bench": (
        "run a benchmark sweep (bench/sweeps/*.toml): CSV rows, plots, roofline",
        _add_bench_args,
        _run_bench,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensornet-fast",
        description="Fast, drop-in inference for TensorNet (torchmd-net) potentials.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
