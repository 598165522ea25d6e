"""Shared helpers of the training scripts: the data set as per-structure arrays, and batching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Dataset:
    """Structures of one split; ``z``/``pos``/``forces`` are per-structure arrays."""

    z: list[np.ndarray]
    pos: list[np.ndarray]
    forces: list[np.ndarray]
    energy: np.ndarray
    kind: np.ndarray
    system: np.ndarray

    def __len__(self) -> int:
        return len(self.energy)

    def batch(self, idx, dtype=torch.float32):
        """(z, pos, batch, energy [B,1], forces, n_atoms [B]) tensors for the structures ``idx``."""
        z = np.concatenate([self.z[i] for i in idx])
        pos = np.concatenate([self.pos[i] for i in idx])
        forces = np.concatenate([self.forces[i] for i in idx])
        n = np.array([len(self.z[i]) for i in idx])
        return (
            torch.from_numpy(z.astype(np.int64)),
            torch.from_numpy(pos).to(dtype),
            torch.from_numpy(np.repeat(np.arange(len(idx)), n)),
            torch.from_numpy(self.energy[idx]).to(torch.float64)[:, None],
            torch.from_numpy(forces).to(dtype),
            torch.from_numpy(n),
        )


def load_split(path: str, split: str) -> Dataset:
    data = np.load(path)
    offsets = np.concatenate([[0], np.cumsum(data["n_atoms"])])
    keep = np.nonzero(data["split"] == SPLITS[split])[0]

    def cut(a):
        return [a[offsets[i] : offsets[i + 1]] for i in keep]

    return Dataset(
        z=cut(data["z"]),
        pos=cut(data["pos"]),
        forces=cut(data["forces"]),
        energy=data["energy"][keep],
        kind=data["kind"][keep],
        system=data["system"][keep],
    )


def use_pure_pytorch_tensornet() -> None:
    """torchmd-net's pure-PyTorch TensorNet (no Warp kernels): set before building the model.
    The switch itself is the tests' oracle one (tests/oracle.py), applied when it is imported."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    import oracle  # noqa: F401  (importing it switches torchmd-net to its pure path)
