"""``tensornet-fast energies``: energies and forces of every structure in the input files."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Iterator

from ..errors import InputError
from .options import BACKEND_HELP, DEFAULT_MOLECULES, _add_filter_mode


def add_arguments_energies(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        default=[DEFAULT_MOLECULES],
        help="structure files ASE can read (xyz, extxyz, sdf, pdb, ...); "
        "default: the bundled molecule set",
    )
    p.add_argument(
        "--model",
        default="default",
        help="checkpoint path, matgl model folder, 'matgl:<name>' or 'default' (bundled)",
    )
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


def run_energies(args: argparse.Namespace) -> int:
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
        # matgl computes pbc short of all True as a molecule (its own calculator's rule)
        matgl_molecule = model.config.source_format == "matgl" and not atoms.pbc.all()
        if atoms.pbc.any() and not matgl_molecule:
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
