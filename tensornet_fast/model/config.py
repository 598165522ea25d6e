"""Hyper-parameters of a TensorNet model, read from a torchmd-net checkpoint."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..errors import CheckpointError

ACTIVATIONS = ("silu", "ssp", "tanh", "sigmoid", "swish", "mish")
RBF_TYPES = ("expnorm", "gauss")
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

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def validate(self) -> None:
        problems = []
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} not in {ACTIVATIONS}")
        if self.rbf_type not in RBF_TYPES:
            problems.append(f"rbf_type {self.rbf_type!r} not in {RBF_TYPES}")
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
