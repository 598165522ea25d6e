"""``tensornet-fast`` command line. Subcommands register themselves in ``SUBCOMMANDS``:
each entry maps a name to ``(add_arguments(parser), run(args) -> exit code)``."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Iterator

from .errors import InputError

DEFAULT_MOLECULES = os.path.join(os.path.dirname(__file__), "data", "molecules.xyz")


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
    p.add_argument("--backend", default="auto", help="compute backend (auto, reference)")
    p.add_argument("--precision", type=int, choices=(32, 64), default=None,
                   help="run in float32/float64 (default: the checkpoint's)")
    p.add_argument("--out", default="-", help="CSV output file ('-' = stdout)")
    p.add_argument("--forces", action="store_true", help="also write per-atom forces")


def _frames(paths: list[str]) -> Iterator[tuple[str, object]]:
    from ase.io import iread

    for path in paths:
        for k, atoms in enumerate(iread(path, index=":")):
            yield f"{os.path.basename(path)}:{k}", atoms


def _run_energies(args: argparse.Namespace) -> int:
    import torch

    from .model import load_model

    overrides = {} if args.precision is None else {"precision": args.precision}
    model = load_model(args.model, device=args.device, backend=args.backend, **overrides)
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
    from .backends import available_backends
    from .model import load_model

    model = load_model(args.model, layout=args.layout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model}\n{model.config}\nparameters: {n_params}")
    print(f"backends available here: {', '.join(available_backends())}")
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
    "info": ("print a checkpoint's hyper-parameters and the available backends", _add_info_args,
             _run_info),
    "bench": ("run a benchmark sweep (bench/sweeps/*.toml): CSV rows, plots, roofline",
              _add_bench_args, _run_bench),
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
