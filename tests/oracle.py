"""torchmd-net 3.1 as the oracle: writes random-weight TensorNet checkpoints with torchmd-net's
own ``create_model`` and runs them through torchmd-net's pure-PyTorch path.

docs/spec.md "Known defects of the oracle": the Warp path mirrors SO(3) models and its fp64
kernels use a float32 1/3, so the oracle always runs with ``tensornet.OPT = False`` and the
``_`` functions.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torchmdnet.models.tensornet as tmdn_tensornet
    from torchmdnet.models.model import create_model
    from torchmdnet.models.model import load_model as tmdn_load_model

BASE_HPARAMS: dict[str, Any] = dict(
    model="tensornet",
    embedding_dimension=32,
    num_layers=2,
    num_rbf=16,
    rbf_type="expnorm",
    trainable_rbf=False,
    activation="silu",
    cutoff_lower=0.0,
    cutoff_upper=5.0,
    max_z=20,
    max_num_neighbors=128,
    equivariance_invariance_group="O(3)",
    precision=32,
    output_model="Scalar",
    reduce_op="add",
    derivative=True,
    atom_filter=-1,
    prior_model=None,
    prior_args=None,
    charge=False,
    spin=False,
    remove_ref_energy=False,
    standardize=False,
    static_shapes=False,
    box_vecs=None,
    load_model=None,
    output_mlp_num_layers=0,
)


def use_pure_pytorch_tensornet() -> None:
    """Route torchmd-net's TensorNet through its pure-PyTorch functions (not Warp), for the
    whole test process: modules read ``OPT`` when built and the functions when called."""
    tmdn_tensornet.OPT = False
    for name in ("compose_tensor", "decompose_tensor", "tensor_matmul_o3", "tensor_matmul_so3"):
        setattr(tmdn_tensornet, name, getattr(tmdn_tensornet, "_" + name))


use_pure_pytorch_tensornet()


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every learnable number random (torchmd-net's init zeroes biases and sets LayerNorm to 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "norm" in name:  # LayerNorm weights
                p.copy_(1.0 + 0.2 * noise)
            elif "atomref" in name:
                p.copy_(noise)
            elif "linears_tensor" in name:
                # x6: with torchmd-net's init the interaction layers barely change the energy
                # (O(3) and SO(3) models then agree to 1e-7); trained models are far from that.
                p.mul_(6.0).add_(0.05 * noise * p.abs().mean())
            else:
                p.add_(0.05 * noise * p.abs().mean().clamp_min(1e-3))
        for name, b in model.named_buffers():
            if name.endswith("initial_atomref"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64).to(b.dtype))


# torchmd-net's priors take lengths and energies in SI: Angstrom and eV
PRIOR_UNITS = dict(distance_scale=1e-10, energy_scale=1.602176634e-19)


def pair_prior(name: str, cutoff: float, max_neighbors: int) -> dict:
    """A "ZBL" or "D2" entry of the ``prior_model`` hyper-parameter (elements 0..19)."""
    return {
        name: dict(
            cutoff_distance=cutoff,
            max_num_neighbors=max_neighbors,
            atomic_number=list(range(20)),
            **PRIOR_UNITS,
        )
    }


def make_small_checkpoint(path: str | os.PathLike, seed: int, **hparams) -> str:
    """The small but complete model of the integration tests (calculator, MD, compile, export):
    F=16, K=8, r_c=4 A and a ZBL prior; ``hparams`` override."""
    zbl = pair_prior("ZBL", 2.0, 32)
    small = dict(embedding_dimension=16, num_rbf=8, cutoff_upper=4.0, prior_model=[zbl])
    return make_checkpoint(path, seed=seed, **{**small, **hparams})


def make_checkpoint(path: str | os.PathLike, seed: int = 0, mean=None, std=None, **hparams) -> str:
    """Write a Lightning-style ``.ckpt`` for a random TensorNet built by torchmd-net itself."""
    args = copy.deepcopy(BASE_HPARAMS)
    args.update(hparams)
    dtype = torch.float64 if args["precision"] == 64 else torch.float32
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prior_models = None
        if args["prior_model"]:
            from torchmdnet.models.model import create_prior_models

            prior_models = create_prior_models(args)
            args["prior_args"] = [p.get_init_args() for p in prior_models]
        model = create_model(
            args,
            prior_model=prior_models,
            mean=None if mean is None else torch.tensor(mean, dtype=dtype),
            std=None if std is None else torch.tensor(std, dtype=dtype),
        )
    _randomise(model, seed)
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": args, "state_dict": state, "epoch": 0}, os.fspath(path))
    return os.fspath(path)


def load_oracle(path: str | os.PathLike, **kwargs) -> torch.nn.Module:
    """torchmd-net's own ``load_model`` on its pure-PyTorch path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tmdn_load_model(os.fspath(path), **kwargs)
    return model.eval()


def oracle_energy_forces(model, z, pos, batch=None, box=None, q=None):
    """Run the oracle in its own dtype; float64 oracles run with float64 as default dtype so
    torchmd-net's priors do not round constants such as Z**0.23 to float32."""
    dtype = next(model.parameters()).dtype
    with warnings.catch_warnings(), default_dtype(dtype):
        warnings.simplefilter("ignore")
        y, f = model(z, pos.clone(), batch=batch, box=box, q=q)
    return y.detach(), f.detach()
