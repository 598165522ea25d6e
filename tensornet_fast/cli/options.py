"""Options, help texts and the run wrapper shared by several subcommands."""

from __future__ import annotations

import argparse
import os
import sys

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MOLECULES = os.path.join(_PACKAGE, "data", "molecules.xyz")


BACKEND_HELP = (
    "compute backend: auto (cpu on CPU, triton on CUDA when Triton is installed), reference, "
    "cpu, triton; `tensornet-fast info` lists those available here"
)
FILTER_MODE_HELP = (
    "radial filters: auto (tabulated on the cpu backend in float32 when the tables' "
    "measured error is within float32 rounding of the exact filter, else exact), exact, "
    "tabulated"
)
INPUTS_HELP = (
    "structure files: .xyz/.extxyz (cells from Lattice=/pbc=), .sdf/.sd/.mol (RDKit; every "
    "record), .smi/.smiles/.txt (one SMILES per line, optional name; 3D conformers by RDKit "
    "ETKDG with hydrogens), and any other format ASE reads (cif, POSCAR, pdb, traj, ...); "
    "read streaming, one output row per structure"
)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose help does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and "default" not in text
            and action.default is not None
            and action.default is not False  # (0 == False: compare by identity)
            and action.default != argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text


def _add_filter_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--filter-mode",
        default="auto",
        choices=("auto", "exact", "tabulated"),
        help=FILTER_MODE_HELP,
    )


def add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "blocked", "interleaved"),
        help="weight layout of the checkpoint: auto reads files of torchmd-net < 2.6.2 as "
        "interleaved and all others as blocked; files written by torchmd-net 2.6.2 need "
        "interleaved",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="default",
        help="torchmd-net checkpoint (.ckpt) path, matgl model folder, 'matgl:<name>', or "
        "'default' (bundled; the default)",
    )
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    g.add_argument("--backend", default="auto", help=BACKEND_HELP)
    _add_filter_mode(g)
    g.add_argument(
        "--precision",
        type=int,
        choices=(32, 64),
        default=None,
        help="run in float32 or float64 (default: the checkpoint's precision)",
    )
    add_layout(g)


def add_unit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "units (output columns are eV and Angstrom; these convert models trained in others)"
    )
    g.add_argument(
        "--energy-unit",
        type=float,
        default=1.0,
        metavar="EV",
        help="eV per model energy unit, e.g. 0.0433641 for kcal/mol, 27.211386 for Hartree "
        "(default: 1, a model trained in eV)",
    )
    g.add_argument(
        "--length-unit",
        type=float,
        default=1.0,
        metavar="ANGSTROM",
        help="Angstrom per model length unit, e.g. 10 for nm, 0.529177 for Bohr "
        "(default: 1, a model trained in Angstrom)",
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-atoms",
        type=int,
        default=None,
        metavar="N",
        help="atoms per model call (default: 1024 on CPU, 16384 on CUDA)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="ETKDG random seed for 3D conformers of SMILES"
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "none"),
        default="auto",
        help="progress on stderr: auto = a bar with rate and ETA on a terminal, a log line "
        "every 10 s otherwise; bar, log, or none (default: auto)",
    )


def check_numbers(args: argparse.Namespace) -> str | None:
    """A message for option values that are out of range (argparse checks only types)."""
    import math

    for name in ("energy_unit", "length_unit", "fmax"):
        v = getattr(args, name, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            return f"--{name.replace('_', '-')} must be a positive finite number, got {v}"
    for name in ("batch_atoms", "window", "max_steps", "shard_size", "rows_per_part"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {v}"
    for name in ("threads", "workers", "parse_workers"):
        v = getattr(args, name, None)
        if v is not None and v < (0 if name == "parse_workers" else 1):
            return f"--{name.replace('_', '-')} must be positive, got {v}"
    return None


def check_device(device: str) -> str | None:
    """A message if ``device`` is not a torch device that exists here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device}: no CUDA device here (torch {torch.__version__})"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here"
    return None


def spec_kwargs(args: argparse.Namespace) -> dict:
    """ScreenSpec fields shared by energies and screen."""
    return dict(
        model=args.model,
        device=args.device,
        backend=args.backend,
        filter_mode=args.filter_mode,
        precision=args.precision,
        layout=args.layout,
        batch_atoms=args.batch_atoms,
        seed=args.seed,
        energy_unit=args.energy_unit,
        length_unit=args.length_unit,
    )


def run_job(command: str, inputs, out: str, spec, **kwargs) -> int:
    """Run the shared pipeline for ``command``; every failure is one message, no traceback."""
    from ..errors import CheckpointError, InputError
    from ..screening import screen

    def say(msg: str) -> None:
        print(f"tensornet-fast {command}: {msg}", file=sys.stderr, flush=True)

    problem = check_device(spec.device)
    if not out:
        problem = "--out is empty: give a file name, or - for stdout"
    if problem:
        say(problem)
        return 2
    try:
        stats = screen(inputs, out, spec, label=command, **kwargs)
    except KeyboardInterrupt:
        if out == "-":
            say(
                "interrupted; the rows printed so far are complete. Re-run to start again "
                "(with --out FILE a re-run resumes where it stopped)"
            )
        else:
            say(
                f"interrupted; {out} is valid. Re-run the same command to resume "
                "(rows already there are skipped)"
            )
        return 130
    except (InputError, CheckpointError) as exc:
        say(str(exc))
        return 2
    except (ValueError, OSError, RuntimeError, AssertionError, ImportError) as exc:
        # (torch and backends raise RuntimeError/AssertionError for unusable devices, and a
        # missing optional package is an ImportError): one line, no traceback, unless asked
        if os.environ.get("TENSORNET_FAST_TRACEBACK") == "1":
            raise
        say(f"{type(exc).__name__}: {exc}")
        return 2
    say(stats.summary())
    return 0
