"""Reading torchmd-net TensorNet checkpoints (``.ckpt`` Lightning pickles or plain state dicts).

The result is a :class:`ModelConfig` and a state dict whose keys are torchmd-net's module names
without the ``model.`` prefix, in the current (torchmd-net >= 3.0, "blocked") weight layout.

Weight layout: torchmd-net >= 3.0 splits the 3F outputs of ``tensor_embedding.linears_scalar.1``
and ``layers.l.linears_scalar.2`` in blocks (row ``k*F + f`` feeds component k of channel f);
torchmd-net <= 2.6.2 interleaved them (row ``3*f + k``). The file does not say which one it holds:
torchmd-net 3.1 guesses "interleaved" from the ``check_errors`` hyper-parameter, which torchmd-net
< 2.6.2 wrote, but 2.6.2 files have no such key and still interleave. ``layout="auto"`` follows
the same rule; pass ``layout="interleaved"`` for files written by torchmd-net 2.6.2 (and any
older file), ``layout="blocked"`` for files written by 3.x.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from ...errors import CheckpointError, InputError, OverrideError
from ..config import ModelConfig, PriorSpec
from ..elements import trained_elements

LAYOUTS = ("auto", "blocked", "interleaved")
SUPPORTED_PRIORS = ("Atomref", "LearnableAtomref", "ZBL", "D2")
_LAYOUT_HELP = (
    "Pass layout='interleaved' for checkpoints written by torchmd-net <= 2.6.2 and "
    "layout='blocked' for checkpoints written by torchmd-net >= 3.0."
)

# Hyper-parameters assumed when a plain state dict (no hyper_parameters) is loaded.
_HPARAM_DEFAULTS: dict[str, Any] = {
    "model": "tensornet",
    "embedding_dimension": 128,
    "num_layers": 2,
    "num_rbf": 32,
    "rbf_type": "expnorm",
    "trainable_rbf": False,
    "activation": "silu",
    "cutoff_lower": 0.0,
    "cutoff_upper": 4.5,
    "max_z": 128,
    "max_num_neighbors": 64,
    "equivariance_invariance_group": "O(3)",
    "precision": 32,
    "output_model": "Scalar",
    "reduce_op": "add",
    "prior_model": None,
    "prior_args": None,
    "charge": False,
    "remove_ref_energy": False,
    "box_vecs": None,
}


def _allowed_globals() -> list:
    """The non-tensor types found in torchmd-net / Lightning checkpoints, allowed by the
    ``weights_only`` unpickler: argparse namespaces and Lightning's AttributeDict (old
    ``hyper_parameters``), numpy scalars and dtypes (hyper-parameters computed with numpy),
    paths (callback state). Reconstructing each of them runs no code beyond a constructor
    and a ``__dict__`` / item update. torchmd-net 3.1's own files (tests/oracle.py) and the
    bundled default.ckpt need none of them."""
    import argparse
    import pathlib

    import numpy as np

    allowed: list = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath]
    for name in (
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning.pytorch.utilities.parsing.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
        "lightning_fabric.utilities.data.AttributeDict",
    ):
        # read as an OrderedDict: only its items are used, and the weights_only unpickler fills
        # (SETITEMS) no dict subclass but dict, OrderedDict and Counter
        allowed.append((collections.OrderedDict, name))
    core = getattr(np, "_core", None) or np.core
    allowed += [core.multiarray.scalar, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("f8", "f4", "i8", "i4", "?", "U1")]
    allowed.append((core.multiarray.scalar, "numpy.core.multiarray.scalar"))
    return allowed


def read_checkpoint_file(path: str | os.PathLike, trust_pickle: bool = False) -> Mapping[str, Any]:
    """Unpickle a checkpoint on the CPU with a clear error for anything that is not one.

    By default with ``weights_only=True`` and the allow-list of ``_allowed_globals``: a file
    whose pickle would call anything else (a crafted file that runs code when loaded) is
    refused with ``CheckpointError`` before any of it runs. ``trust_pickle=True`` unpickles
    with ``weights_only=False`` (arbitrary code: only for files you trust)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if trust_pickle:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # corrupt zip, truncated file, not a pickle...
            raise CheckpointError(f"cannot read {path} as a torch checkpoint: {exc}") from exc
    else:
        try:
            with torch.serialization.safe_globals(_allowed_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path} was refused by the safe loader (torch.load weights_only=True with "
                f"tensornet_fast's allow-list of checkpoint types): {str(exc).splitlines()[0]} "
                "-- nothing in the file was run. If you trust the file, load it with "
                "trust_pickle=True (unpickling can run arbitrary code)."
            ) from None
        except Exception as exc:  # corrupt zip, truncated file, not a pickle...
            raise CheckpointError(f"cannot read {path} as a torch checkpoint: {exc}") from exc
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict or a state dict"
        )
    return ckpt


def split_checkpoint(ckpt: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return (hyper_parameters, state_dict) of a Lightning checkpoint or a plain state dict."""
    if "state_dict" in ckpt:
        state = ckpt["state_dict"]
        hparams = ckpt.get("hyper_parameters")
        if hparams is None:
            hparams = {}
    elif all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, hparams = ckpt, {}
    else:
        raise CheckpointError(
            "not a torchmd-net checkpoint: no 'state_dict' entry and not a plain state dict"
        )
    if not isinstance(hparams, Mapping):
        hparams = vars(hparams) if hasattr(hparams, "__dict__") else {}
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError("the checkpoint's state_dict is empty or not a mapping")
    state = {re.sub(r"^model\.", "", k): v for k, v in state.items()}
    return dict(hparams), state


def _rename_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # torchmd-net < 2.3 named the Scalar head output_network.{0,2}; now output_network.layers.{0,2}.
    legacy = re.compile(r"^output_model\.output_network\.(\d+)\.(weight|bias)$")
    return {legacy.sub(r"output_model.output_network.layers.\1.\2", k): v for k, v in state.items()}


def _parse_priors(hparams: Mapping[str, Any]) -> tuple[PriorSpec, ...]:
    """The prior list exactly as torchmd-net's ``create_prior_models`` builds it."""
    prior_model = hparams.get("prior_model")
    if not prior_model:
        return ()
    names: list[str] = []
    args: list[dict[str, Any]] = []
    for prior in prior_model if isinstance(prior_model, list) else [prior_model]:
        if isinstance(prior, Mapping):
            for key, value in prior.items():
                names.append(key)
                args.append(dict(value or {}))
        else:
            names.append(str(prior))
            args.append({})
    prior_args = hparams.get("prior_args")
    if prior_args is not None:
        args = [
            dict(a or {}) for a in (prior_args if isinstance(prior_args, list) else [prior_args])
        ]
    specs = []
    for name, arg in zip(names, args):
        if name not in SUPPORTED_PRIORS:
            raise CheckpointError(
                f"prior model {name!r} is not supported (supported: {', '.join(SUPPORTED_PRIORS)})"
            )
        if name == "LearnableAtomref":
            name, arg = "Atomref", {**arg, "enable": True}
        specs.append(PriorSpec(name, arg))
    return tuple(specs)


def _typed(hp: Mapping[str, Any], key: str, kind: type) -> Any:
    value = hp[key]
    if kind is bool:
        if not isinstance(value, (bool, int)):
            raise CheckpointError(f"{key} must be true or false, got {value!r}")
        return bool(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or isinstance(value, bool) or math.isnan(number):
        raise CheckpointError(f"{key} must be a number, got {value!r}")
    if kind is int:
        if not number.is_integer():
            raise CheckpointError(f"{key} must be an integer, got {value!r}")
        return int(number)
    return number


def _build_config(hp: Mapping[str, Any], remove_ref_off: bool) -> ModelConfig:
    model_name = hp["model"]
    if model_name != "tensornet":
        raise CheckpointError(
            f"not a TensorNet checkpoint: model={model_name!r} (only 'tensornet' is supported)"
        )
    if hp["output_model"] != "Scalar":
        raise CheckpointError(
            f"unsupported output model {hp['output_model']!r}: only 'Scalar' (energies) "
            "is supported"
        )
    priors = list(_parse_priors(hp))
    # torchmd-net's remove_ref_energy: the Atomref prior was trained disabled; loading with
    # remove_ref_energy=False switches it on to predict total energies.
    if remove_ref_off:
        if not priors or priors[-1].name != "Atomref":
            raise CheckpointError(
                "remove_ref_energy=False needs an Atomref prior as the last prior"
            )
        priors[-1] = PriorSpec("Atomref", {**priors[-1].args, "enable": True})
    box = hp.get("box_vecs")
    if box is not None:
        try:
            box = tuple(tuple(float(x) for x in row) for row in box)
        except (TypeError, ValueError):
            raise CheckpointError(f"box_vecs must be 3 rows of 3 numbers, got {box!r}") from None
    config = ModelConfig(
        embedding_dimension=_typed(hp, "embedding_dimension", int),
        num_layers=_typed(hp, "num_layers", int),
        num_rbf=_typed(hp, "num_rbf", int),
        rbf_type=str(hp["rbf_type"]),
        trainable_rbf=_typed(hp, "trainable_rbf", bool),
        activation=str(hp["activation"]),
        cutoff_lower=_typed(hp, "cutoff_lower", float),
        cutoff_upper=_typed(hp, "cutoff_upper", float),
        max_z=_typed(hp, "max_z", int),
        max_num_neighbors=_typed(hp, "max_num_neighbors", int),
        equivariance_invariance_group=str(hp["equivariance_invariance_group"]),
        precision=_typed(hp, "precision", int),
        reduce_op=str(hp["reduce_op"]),
        charge=bool(hp.get("charge", False)),
        priors=tuple(priors),
        output_hidden_layers=0,
        box_vecs=box,
    )
    config.validate()
    return config


def config_from_hparams(hparams: Mapping[str, Any], overrides: Mapping[str, Any]) -> ModelConfig:
    """The config of the checkpoint's hyper-parameters with ``overrides`` applied. A bad value
    in the file is a ``CheckpointError``, a bad override an ``InputError`` naming it."""
    base = {**_HPARAM_DEFAULTS, **hparams}
    for key, value in overrides.items():
        if key not in base:
            raise OverrideError(
                f"unknown model override {key}={value!r}; the overridable hyper-parameters are "
                + ", ".join(sorted(base))
            )
    hp = {**base, **overrides}
    remove_ref_off = bool(hparams.get("remove_ref_energy")) and (
        overrides.get("remove_ref_energy") is False
    )
    try:
        return _build_config(hp, remove_ref_off)
    except CheckpointError as exc:
        if not overrides:
            raise
        try:
            _build_config(base, False)
        except CheckpointError:
            raise exc from None
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise InputError(f"load_model override {given}: {exc}") from None


def _deinterleave(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows 3f+k (interleaved) -> rows kF+f (blocked)."""
    rows, cols = weight.shape
    if rows % 3:
        raise CheckpointError(f"expected a 3F-row weight, got shape {tuple(weight.shape)}")
    weight = weight.reshape(rows // 3, 3, cols).transpose(0, 1).reshape(rows, cols)
    bias = bias.reshape(rows // 3, 3).transpose(0, 1).reshape(rows)
    return weight, bias


def _interleaved_keys(num_layers: int) -> list[str]:
    keys = ["representation_model.tensor_embedding.linears_scalar.1"]
    keys += [f"representation_model.layers.{i}.linears_scalar.2" for i in range(num_layers)]
    return keys


def resolve_layout(hparams: Mapping[str, Any], layout: str) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        return layout
    if "check_errors" in hparams:
        warnings.warn(
            "checkpoint has the 'check_errors' hyper-parameter of torchmd-net < 2.6.2: reading "
            f"its weights in the old interleaved layout. {_LAYOUT_HELP}",
            stacklevel=3,
        )
        return "interleaved"
    return "blocked"


_PRIOR_BOX = re.compile(r"^prior_model\.\d+\.distances?\.box$")


def normalise_state_dict(
    state: Mapping[str, torch.Tensor], config: ModelConfig, layout: str
) -> dict[str, torch.Tensor]:
    state = _rename_legacy_keys(dict(state))
    # ZBL/D2 keep a neighbour-search module whose box buffer is an unused zero placeholder
    # (their periodicity comes from the box passed at call time); older files lack it.
    state = {k: v for k, v in state.items() if not _PRIOR_BOX.match(k)}
    if layout == "interleaved":
        for prefix in _interleaved_keys(config.num_layers):
            wkey, bkey = prefix + ".weight", prefix + ".bias"
            if wkey in state and bkey in state:
                state[wkey], state[bkey] = _deinterleave(state[wkey], state[bkey])
    if "representation_model.distance.box" not in state:
        # torchmd-net < 2.5 had no box buffer; it only matters when box_vecs is set.
        state["representation_model.distance.box"] = torch.zeros(3, 3)
    return state


class Checkpoint(NamedTuple):
    config: ModelConfig
    state: dict[str, torch.Tensor]  # normalised (blocked layout, no ``model.`` prefix)
    layout: str  # the layout used
    elements: tuple[int, ...] | None  # trained elements (``model.elements``), None: unknown


def read_checkpoint(
    path_or_dict: str | os.PathLike | Mapping[str, Any],
    layout: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
) -> Checkpoint:
    """Parse a checkpoint into its config, normalised state dict, layout and trained elements."""
    if isinstance(path_or_dict, Mapping):
        ckpt = path_or_dict
    elif isinstance(path_or_dict, (str, bytes, os.PathLike)):
        ckpt = read_checkpoint_file(path_or_dict, trust_pickle=trust_pickle)
    else:
        raise CheckpointError(
            "path must be a checkpoint file name, a model name ("
            + ", ".join(("default",))
            + ") or a checkpoint / state-dict mapping, got "
            + type(path_or_dict).__name__
        )
    hparams, state = split_checkpoint(ckpt)
    if not hparams:
        hparams = infer_hparams_from_state(state)
    config = config_from_hparams(hparams, overrides or {})
    used = resolve_layout(hparams, layout)
    state = normalise_state_dict(state, config, used)
    elements = trained_elements(ckpt, hparams, state, config.max_z)
    return Checkpoint(config, state, used, elements)


def load_checkpoint(
    path_or_dict: str | os.PathLike | Mapping[str, Any],
    layout: str = "auto",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    """Parse a checkpoint into (config, normalised state dict, layout used)."""
    c = read_checkpoint(path_or_dict, layout, overrides)
    return c.config, c.state, c.layout


def infer_hparams_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Shapes a plain state dict fixes; everything else keeps torchmd-net's defaults and can be
    given as overrides to ``load_model`` (e.g. ``cutoff_upper=5.0``)."""
    try:
        emb = state["representation_model.tensor_embedding.emb.weight"]
        proj = state["representation_model.tensor_embedding.distance_proj1.weight"]
    except KeyError as exc:
        raise CheckpointError(f"not a TensorNet state dict: missing {exc.args[0]!r}") from exc
    layer_ids = {
        int(m.group(1))
        for k in state
        if (m := re.match(r"representation_model\.layers\.(\d+)\.", k))
    }
    precision = 64 if emb.dtype == torch.float64 else 32
    warnings.warn(
        "plain state dict without hyper-parameters: cutoffs, activation, RBF type, group and "
        "priors take torchmd-net's defaults unless given as load_model(..., key=value)",
        stacklevel=3,
    )
    return {
        "max_z": emb.shape[0],
        "embedding_dimension": emb.shape[1],
        "num_rbf": proj.shape[1],
        "num_layers": len(layer_ids),
        "precision": precision,
    }
