"""``tensornet-fast info``: a checkpoint's hyper-parameters and the backends available here."""

from __future__ import annotations

import argparse


def add_arguments_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="checkpoint path or 'default'")
    p.add_argument("--layout", default="auto", choices=("auto", "blocked", "interleaved"))


def run_info(args: argparse.Namespace) -> int:
    from ..backends import available_backends
    from ..model import load_model

    model = load_model(args.model, layout=args.layout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model}\n{model.config}\nparameters: {n_params}")
    print(f"backends available here: {', '.join(available_backends())}")
    return 0
