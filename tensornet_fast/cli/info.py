"""``tensornet-fast info``: a checkpoint at a glance (units, trained elements, cutoff, size,
backends available here), as a two-column table."""

from __future__ import annotations

import argparse
import os
import sys

from .options import add_layout

BUNDLED_UNITS = "eV and Angstrom (forces eV/Angstrom, stress eV/Angstrom^3)"
UNRECORDED_UNITS = (
    "not recorded in the checkpoint: those of its training data. The CLI writes eV and "
    "Angstrom and assumes the model is in them; --energy-unit/--length-unit convert others"
)


def add_arguments_info(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="checkpoint (.ckpt) path, matgl model folder, 'matgl:<name>' or 'default' (bundled)",
    )
    add_layout(p)


def _is_bundled(name: str) -> bool:
    from ..model import NAMED_MODELS

    path = NAMED_MODELS.get(name, name)
    return os.path.exists(path) and any(
        os.path.exists(p) and os.path.samefile(path, p) for p in NAMED_MODELS.values()
    )


def elements_line(model) -> str:
    """The trained elements by symbol (``TensorNetModel.elements``: atomic numbers the model
    was trained on, or None when the checkpoint does not say)."""
    from ..screening.elements import symbols

    trained = getattr(model, "elements", None)
    if getattr(model.config, "element_types", None) is not None:  # matgl: z = atomic numbers
        names = " ".join(symbols(sorted(int(z) for z in trained)))
        return f"{names} (the model's element list; other elements are refused)"
    accepted = f"atomic numbers 1..{model.config.max_z - 1} accepted"
    if trained is None:
        return f"not recorded in the checkpoint ({accepted})"
    return f"{' '.join(symbols(sorted(int(z) for z in trained)))} (trained on; {accepted})"


def info_rows(model, name: str) -> list[tuple[str, str]]:
    from ..backends import available_backends
    from ..model import NAMED_MODELS

    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    path = NAMED_MODELS.get(name, name)
    priors = ", ".join(p.name for p in c.priors) or "none"
    return [
        ("model", name if path == name else f"{name} ({path})"),
        (
            "architecture",
            f"TensorNet {c.equivariance_invariance_group}: {c.embedding_dimension} channels, "
            f"{c.num_layers} layers, {c.num_rbf} {c.rbf_type} radial functions, {c.activation}",
        ),
        ("format", getattr(model, "source", c.source_format)),
        *(
            [("embedding convention", f"{c.embedding_convention} (docs/matgl.md)")]
            if c.source_format == "matgl"
            else []
        ),
        ("units", _units(c, name)),
        ("elements", elements_line(model)),
        (
            "cutoff",
            f"{c.cutoff_upper:g} Angstrom (lower {c.cutoff_lower:g}; with priors "
            f"{model.max_cutoff:g})",
        ),
        ("parameters", f"{n_params:,}"),
        ("precision", f"float{c.precision}"),
        ("total charge", "used (trained with charges)" if c.charge else "not used"),
        ("priors", priors),
        ("reduction", c.reduce_op),
        (
            "backend",
            f"{model.backend} (filter mode {model.filter_mode}); available here: "
            f"{', '.join(available_backends())}",
        ),
    ]


def _units(c, name: str) -> str:
    if c.energy_unit is not None:  # the file records them (matgl)
        e, a = c.energy_unit, c.length_unit
        return f"energy {e}, forces {e}/{a}, stress {e}/{a}^3"
    return BUNDLED_UNITS if _is_bundled(name) else UNRECORDED_UNITS


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_info(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError, InputError
    from ..model import load_model

    try:
        model = load_model(args.model, layout=args.layout)
    except (CheckpointError, InputError, OSError, ValueError) as exc:
        print(f"tensornet-fast info: {exc}", file=sys.stderr)
        return 2
    print(format_table(info_rows(model, args.model)))
    return 0
