"""``tensornet-fast info``: a checkpoint's hyper-parameters and the backends available here."""

from __future__ import annotations

import argparse


def add_arguments_info(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="checkpoint path, matgl model folder, 'matgl:<name>' or 'default'",
    )
    p.add_argument("--layout", default="auto", choices=("auto", "blocked", "interleaved"))


def run_info(args: argparse.Namespace) -> int:
    from ..backends import available_backends
    from ..model import load_model

    model = load_model(args.model, layout=args.layout)
    n_params = sum(p.numel() for p in model.parameters())
    c = model.config
    print(f"model: {args.model}\nformat: {getattr(model, 'source', c.source_format)}")
    if c.source_format == "matgl":
        print(f"embedding convention: {c.embedding_convention} (docs/matgl.md)")
    if c.element_types is not None:
        print(f"elements ({len(c.element_types)}, z = atomic numbers): {' '.join(c.element_types)}")
    units = "the checkpoint's (its training data's)"
    if c.energy_unit is not None:
        e, a = c.energy_unit, c.length_unit
        units = f"energy {e}, forces {e}/{a}, stress {e}/{a}^3 (ASE calculator)"
    print(f"units: {units}")
    print(f"{c}\nparameters: {n_params}")
    print(f"backends available here: {', '.join(available_backends())}")
    return 0
