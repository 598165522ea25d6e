"""Hyper-parameters of a TensorNet model, read from a torchmd-net checkpoint or a matgl model
folder. The defaults are torchmd-net's, so a torchmd-net checkpoint sets none of the fields
after ``box_vecs`` (the ones matgl's TensorNet needs)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..errors import CheckpointError

ACTIVATIONS = ("silu", "ssp", "tanh", "sigmoid", "swish", "mish")
# "smooth_bessel": matgl's smooth spherical Bessel basis (SphericalBessel, use_smooth=True).
RBF_TYPES = ("expnorm", "gauss", "smooth_bessel")
# "scalar": torchmd-net's Scalar head; "gated": matgl's gated MLP, [L..](h) * sigmoid([G..](h)).
READOUTS = ("scalar", "gated")
GROUPS = ("O(3)", "SO(3)")
REDUCE_OPS = ("add", "sum", "mean")
PRECISIONS = {32: torch.float32, 64: torch.float64}


@dataclasses.dataclass(frozen=True)
class PriorSpec:
    """One prior of the checkpoint, in the order torchmd-net applies them."""

    name: str  # "Atomref", "ZBL" or "D2"
    args: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    embedding_dimension: int = 128
    num_layers: int = 2
    num_rbf: int = 32
    rbf_type: str = "expnorm"
    trainable_rbf: bool = False
    activation: str = "silu"
    cutoff_lower: float = 0.0
    cutoff_upper: float = 4.5
    max_z: int = 128
    max_num_neighbors: int = 64
    equivariance_invariance_group: str = "O(3)"
    precision: int = 32
    reduce_op: str = "add"
    charge: bool = False
    priors: tuple[PriorSpec, ...] = ()
    output_hidden_layers: int = 0
    box_vecs: tuple[tuple[float, ...], ...] | None = None
    # --- matgl's TensorNet (docs/matgl.md); torchmd-net's values as defaults
    # Activation after ``representation_model.linear`` (matgl: none).
    linear_activation: bool = True
    readout: str = "scalar"
    # Output widths of the gated readout's linears, e.g. (F, F, F, 1) (readout "gated" only).
    readout_widths: tuple[int, ...] = ()
    # One self-loop (d = 0) per atom in the network's graph (matgl: none).
    self_loops: bool = True
    # Chemical symbols of the embedding's rows: ``z`` are then atomic numbers, mapped to rows
    # (other elements are refused); None: ``z`` is the row (torchmd-net).
    element_types: tuple[str, ...] | None = None
    # Where the model came from, for ``info``: "torchmd-net" or "matgl"; for matgl files the
    # embedding convention of the file ("matgl-1": emb2 fed [sender; receiver], "matgl-2":
    # [receiver; sender]) -- the weights are stored in torchmd-net's order either way.
    source_format: str = "torchmd-net"
    embedding_convention: str = "torchmd-net"
    # Units of energies and lengths when the file states them (matgl: eV and Angstrom).
    energy_unit: str | None = None
    length_unit: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def validate(self) -> None:
        problems = []
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} not in {ACTIVATIONS}")
        if self.rbf_type not in RBF_TYPES:
            problems.append(f"rbf_type {self.rbf_type!r} not in {RBF_TYPES}")
        if self.readout not in READOUTS:
            problems.append(f"readout {self.readout!r} not in {READOUTS}")
        widths = self.readout_widths
        if self.readout == "gated" and (len(widths) < 1 or widths[-1] != 1):
            problems.append(f"gated readout widths {self.readout_widths} must end in 1")
        if self.element_types is not None and len(self.element_types) != self.max_z:
            problems.append(f"{len(self.element_types)} element types for {self.max_z} rows")
        if self.equivariance_invariance_group not in GROUPS:
            problems.append(f"equivariance_invariance_group {self.equivariance_invariance_group!r}")
        if self.reduce_op not in REDUCE_OPS:
            problems.append(f"reduce_op {self.reduce_op!r} not in {REDUCE_OPS}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} (supported: 32, 64)")
        if not (0 <= self.cutoff_lower < self.cutoff_upper < math.inf):
            problems.append(
                f"cutoffs lower={self.cutoff_lower} upper={self.cutoff_upper} (need finite "
                "0 <= cutoff_lower < cutoff_upper)"
            )
        if self.embedding_dimension < 2 or self.num_rbf < 1 or self.num_layers < 0:
            problems.append(
                f"embedding_dimension={self.embedding_dimension} (>= 2), num_rbf={self.num_rbf}"
                f" (>= 1), num_layers={self.num_layers} (>= 0)"
            )
        if self.max_z < 1:
            problems.append(f"max_z={self.max_z} (need >= 1: the number of atom types)")
        if self.box_vecs is not None and (
            len(self.box_vecs) != 3 or any(len(r) != 3 for r in self.box_vecs)
        ):
            problems.append(f"box_vecs {self.box_vecs} (need 3 rows of 3 numbers)")
        if problems:
            raise CheckpointError("unsupported TensorNet hyper-parameters: " + "; ".join(problems))
