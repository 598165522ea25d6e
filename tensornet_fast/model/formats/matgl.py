"""Reading matgl's TensorNet model folders (``model.json``, ``model.pt``, ``state.pt``): the
pretrained MatPES / ANI-1x potentials and anything ``Potential.save(folder)`` writes.

The result is the same as for a torchmd-net checkpoint: a :class:`ModelConfig` and a state dict
in this project's parameter names (``representation_model.*``, ``output_model.gated.*``,
``prior_model.0.*`` for the element references, ``mean`` / ``std``), blocked layout, embedding
pair code fed [receiver; sender]. What matgl's TensorNet does differently (docs/matgl.md):

* radial basis: the smooth spherical Bessel functions (``rbf_type="SphericalBessel"``,
  ``use_smooth=True``; ``max_n`` functions), or matgl's Gaussian / ExpNorm expansions;
* no self-loops; z are atomic numbers mapped to rows of ``element_types``;
* the 3F outputs of ``tensor_embedding.linears_scalar.1`` and ``layers.l.linears_scalar.2`` are
  interleaved (torchmd-net's old layout);
* no activation after ``linear``; a gated readout (``final_layer.gated``);
* E = data_std * sum(eps_i) + data_mean + sum(element_refs[row_i]).

**Two embedding conventions.** TensorNet files of ``@model_version`` 1 (matgl <= 2.1; every
pretrained v2025.1 and ANI-1x folder) feed ``emb2`` [sender; receiver]; matgl >= 2.2 (version 2)
feeds [receiver; sender], like torchmd-net. Version-1 weights get the two F-column halves of
``emb2.weight`` swapped on load. matgl 4.x itself loads version-1 files with only a warning and
then computes every multi-element system wrong; this reader does not. Version-2 files also
point their embedding's edge vectors from receiver to sender (version 1 and torchmd-net: sender
to receiver): the embedding's A part changes sign, which is ``linears_tensor.1`` negated (exact;
it matters for SO(3) models only, O(3) energies are even in it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError, InputError
from ..config import PRECISIONS, ModelConfig, PriorSpec
from ..elements import NUMBERS
from .torchmdnet import _deinterleave, _interleaved_keys

FILES = ("model.json", "state.pt")
CONVENTIONS = ("auto", 1, 2)
PREFIX = "matgl:"
ACTIVATIONS = {"swish": "silu", "tanh": "tanh", "sigmoid": "sigmoid", "softplus2": "ssp"}
_RBF_HELP = "supported: SphericalBessel with use_smooth=true, Gaussian, ExpNorm"


def is_matgl_path(path: Any) -> bool:
    """A model folder, or a ``matgl:<name>`` model in matgl's cache."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    return isinstance(path, str) and (path.startswith(PREFIX) or os.path.isdir(path))


def matgl_cache() -> Path:
    """matgl's download cache (``~/.cache/matgl`` in matgl 2.x to 4.x)."""
    return Path.home() / ".cache" / "matgl"


def find_cached(name: str) -> Path:
    """The folder of matgl model ``name`` in matgl's cache: ``<cache>/<name>`` (matgl <= 2.x,
    downloaded from GitHub) or ``<cache>/models--<org>--<name>/snapshots/<rev>`` (matgl >= 3,
    from the Hugging Face Hub; the newest snapshot). Raises CheckpointError saying how to get
    it otherwise (tensornet_fast downloads nothing)."""
    cache = matgl_cache()
    candidates = [cache / name]
    for repo in sorted(cache.glob(f"models--*--{name}")):
        snaps = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
        candidates += snaps[::-1]
    for folder in candidates:
        if all((folder / f).is_file() for f in FILES):
            return folder
    raise CheckpointError(
        f"matgl model {name!r} is not in matgl's cache ({cache}): download it once with "
        f"matgl (`python -c \"import matgl; matgl.load_model('{name}')\"`, needs internet), "
        "or pass the model's folder (model.json, model.pt, state.pt) to load_model"
    )


def _scalar(value: Any, what: str) -> float:
    """A number from model.pt (float, tensor) or model.json (``"tensor(3.25)"``)."""
    if isinstance(value, torch.Tensor):
        return float(value.reshape(()))
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(?:tensor\()?\s*([-+0-9.eE]+)\s*(?:,.*)?\)?\s*", value)
        if m:
            return float(m.group(1))
    raise CheckpointError(f"cannot read {what} = {value!r} as a number")


def _read_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder} is not a matgl model folder: missing {', '.join(missing)} "
            "(a matgl model folder holds model.json, model.pt and state.pt)"
        )
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {folder / 'model.json'} as JSON: {exc}") from exc
    try:
        # The pretrained files were saved on CUDA.
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {folder / 'state.pt'}: {exc}") from exc
    if not isinstance(meta, Mapping) or not isinstance(state, Mapping):
        raise CheckpointError(f"{folder}: model.json or state.pt does not hold a mapping")
    kwargs_pt = None
    if (folder / "model.pt").is_file():
        try:
            kwargs_pt = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
        except Exception:  # only used for exact data_mean / data_std / element_refs
            kwargs_pt = None
    return dict(meta), dict(state), kwargs_pt if isinstance(kwargs_pt, Mapping) else None


def _model_entry(meta: Mapping) -> tuple[dict, dict, bool]:
    """(the TensorNet entry {"@class", "@model_version", "init_args"}, the Potential's kwargs,
    whether a Potential wraps it)."""
    top = meta.get("@class")
    if top == "Potential":
        kwargs = meta.get("kwargs") or {}
        entry = kwargs.get("model")
        if not isinstance(entry, Mapping):
            raise CheckpointError("model.json: the Potential has no 'kwargs.model' entry")
        return dict(entry), dict(kwargs), True
    return {**meta, "init_args": meta.get("kwargs") or {}}, {}, False


def _check_supported(entry: Mapping, args: Mapping, pot: Mapping) -> None:
    cls = entry.get("@class")
    if cls != "TensorNet":
        raise CheckpointError(
            f"not a TensorNet model: this matgl folder holds a {cls!r} "
            f"({entry.get('@module', '?')}); tensornet_fast runs matgl's TensorNet only"
        )
    problems = []
    if args.get("include_state"):
        problems.append("include_state=true (state attributes)")
    if args.get("is_intensive", True):
        problems.append("is_intensive=true (a per-structure property, not a potential)")
    if int(args.get("ntargets", 1)) != 1:
        problems.append(f"ntargets={args.get('ntargets')}")
    if args.get("task_type", "regression") != "regression":
        problems.append(f"task_type={args.get('task_type')!r}")
    if args.get("activation_type", "swish") not in ACTIVATIONS:
        problems.append(
            f"activation_type={args.get('activation_type')!r} (supported: {', '.join(ACTIVATIONS)})"
        )
    for flag in ("calc_repuls", "calc_charge", "calc_magmom"):
        if pot.get(flag):
            problems.append(f"Potential {flag}=true")
    if problems:
        raise CheckpointError("unsupported matgl TensorNet options: " + "; ".join(problems))


def _rbf(args: Mapping, state: Mapping) -> tuple[str, int]:
    """(rbf_type in this project's names, K)."""
    kind = str(args.get("rbf_type", "Gaussian")).lower()
    if kind == "sphericalbessel":
        if not args.get("use_smooth", False):
            raise CheckpointError(
                f"rbf_type SphericalBessel with use_smooth=false is not supported ({_RBF_HELP})"
            )
        return "smooth_bessel", int(args.get("max_n", 3))
    if kind == "gaussian":
        return "gauss", int(state["bond_expansion.rbf.centers"].shape[0])
    if kind == "expnorm":
        return "expnorm", int(state["bond_expansion.rbf.means"].shape[0])
    raise CheckpointError(f"rbf_type {args.get('rbf_type')!r} is not supported ({_RBF_HELP})")


def _rename(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """matgl TensorNet keys (without ``model.``) -> this project's names."""
    out = {}
    for key, value in state.items():
        if key.startswith("final_layer.gated."):
            out["output_model.gated." + key[len("final_layer.gated.") :]] = value
        elif key.startswith(("tensor_embedding.", "layers.", "out_norm.", "linear.")):
            out["representation_model." + key] = value
        elif key.startswith("bond_expansion."):
            continue  # handled by the caller
        else:
            raise CheckpointError(f"state.pt holds an unexpected TensorNet weight {key!r}")
    return out


def load_matgl(
    path: str | os.PathLike,
    convention: int | str = "auto",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    """Parse a matgl TensorNet folder (or ``"matgl:<name>"``) into (config, state dict in this
    project's names, description of what was read). ``convention``: "auto" (from the file's
    TensorNet ``@model_version``), 1 or 2 (see the module docstring)."""
    if convention not in CONVENTIONS:
        raise InputError(f"matgl_convention must be one of {CONVENTIONS}, got {convention!r}")
    path = os.fspath(path)
    folder = find_cached(path[len(PREFIX) :]) if path.startswith(PREFIX) else Path(path)
    meta, raw_state, kwargs_pt = _read_folder(folder)
    entry, pot, wrapped = _model_entry(meta)
    args = dict(entry.get("init_args") or {})
    _check_supported(entry, args, pot)
    version = int(entry.get("@model_version", 0) or 0)
    used = (1 if version <= 1 else 2) if convention == "auto" else int(convention)

    state = {k[len("model.") :]: v for k, v in raw_state.items() if k.startswith("model.")}
    if not wrapped:
        state = dict(raw_state)
    if "tensor_embedding.emb.weight" not in state:
        raise CheckpointError(
            f"{folder / 'state.pt'} has no TensorNet weights (tensor_embedding.emb.weight)"
        )
    rbf_type, k = _rbf(args, state)
    elements = tuple(str(e) for e in args.get("element_types") or ())
    emb = state["tensor_embedding.emb.weight"]
    f = int(emb.shape[1])
    if len(elements) != emb.shape[0]:
        raise CheckpointError(
            f"model.json lists {len(elements)} element_types but the embedding has "
            f"{emb.shape[0]} rows"
        )
    unknown = [e for e in elements if e not in NUMBERS]
    if unknown:
        raise CheckpointError(f"element_types holds unknown chemical symbols {unknown}")
    n_layers = len({m.group(1) for key in state if (m := re.match(r"layers\.(\d+)\.", key))})
    cutoff = float(args.get("cutoff", 5.0))

    new = _rename(state)
    pre = "representation_model."
    # The Warp embedding fuses distance_proj1..3 into one [3F, K] linear (blocks 1 | 2 | 3).
    fused = pre + "tensor_embedding.distance_proj."
    if fused + "weight" in new:
        w, b = new.pop(fused + "weight"), new.pop(fused + "bias")
        for i in range(3):
            new[f"{pre}tensor_embedding.distance_proj{i + 1}.weight"] = w[i * f : (i + 1) * f]
            new[f"{pre}tensor_embedding.distance_proj{i + 1}.bias"] = b[i * f : (i + 1) * f]
    for key in _interleaved_keys(n_layers):  # matgl reshapes 3F as (F, 3): interleaved
        wk, bk = key + ".weight", key + ".bias"
        if wk in new and bk in new:
            new[wk], new[bk] = _deinterleave(new[wk], new[bk])
    emb2 = pre + "tensor_embedding.emb2.weight"
    if used == 1 and emb2 in new:  # [sender; receiver] -> [receiver; sender]
        new[emb2] = torch.cat((new[emb2][:, f:], new[emb2][:, :f]), 1)
    a_lin = pre + "tensor_embedding.linears_tensor.1.weight"
    if used == 2 and a_lin in new:  # edge vectors receiver -> sender: A changes sign
        new[a_lin] = -new[a_lin]
    if rbf_type == "gauss":
        centers = state["bond_expansion.rbf.centers"]
        new[pre + "distance_expansion.offset"] = centers
        width = float(args.get("width", 0.5))
        new[pre + "distance_expansion.coeff"] = torch.tensor(-width, dtype=centers.dtype)
    elif rbf_type == "expnorm":
        new[pre + "distance_expansion.means"] = state["bond_expansion.rbf.means"]
        new[pre + "distance_expansion.betas"] = state["bond_expansion.rbf.betas"]
    new[pre + "distance.box"] = torch.zeros(3, 3, dtype=emb.dtype)

    def potential_value(key: str, default):
        if key in raw_state:
            return raw_state[key]
        if kwargs_pt is not None and key in kwargs_pt:
            return kwargs_pt[key]
        return pot.get(key, default)

    mean = _scalar(potential_value("data_mean", 0.0) or 0.0, "data_mean")
    std = _scalar(potential_value("data_std", 1.0), "data_std")
    new["mean"] = torch.tensor(mean, dtype=torch.float64)
    new["std"] = torch.tensor(std, dtype=torch.float64)
    refs = raw_state.get("element_refs.property_offset")
    if refs is None and pot.get("element_refs") is not None:
        value = kwargs_pt.get("element_refs") if kwargs_pt is not None else None
        if value is None:
            raise CheckpointError(
                "model.json has element_refs but state.pt and model.pt do not: cannot read them "
                "exactly"
            )
        refs = torch.as_tensor(value)
    priors: tuple[PriorSpec, ...] = ()
    if refs is not None:
        refs = torch.as_tensor(refs).to(torch.float64)
        if refs.dim() != 1 or refs.shape[0] != len(elements):
            raise CheckpointError(
                f"element_refs has shape {tuple(refs.shape)}; expected one value per element "
                f"({len(elements)})"
            )
        priors = (PriorSpec("Atomref", {"max_z": len(elements), "enable": True}),)
        new["prior_model.0.initial_atomref"] = refs[:, None].clone()
        new["prior_model.0.atomref.weight"] = refs[:, None].clone()

    gated = sorted(
        (int(m.group(1)), v.shape[0])
        for key, v in state.items()
        if (m := re.fullmatch(r"final_layer\.gated\.layers\.(\d+)\.weight", key))
    )
    if not gated:
        raise CheckpointError("state.pt has no gated readout (final_layer.gated.layers.*)")
    precision = 64 if emb.dtype == torch.float64 else 32
    overrides = dict(overrides or {})
    unknown_over = set(overrides) - {"precision"}
    if unknown_over:
        raise TypeError(
            f"unknown model override(s) {sorted(unknown_over)} for a matgl model (precision only)"
        )
    precision = int(overrides.get("precision", precision))
    if precision not in PRECISIONS:
        raise CheckpointError(f"precision {precision!r} (supported: 32, 64)")
    config = ModelConfig(
        embedding_dimension=f,
        num_layers=n_layers,
        num_rbf=k,
        rbf_type=rbf_type,
        activation=ACTIVATIONS[args.get("activation_type", "swish")],
        cutoff_lower=0.0,
        cutoff_upper=cutoff,
        max_z=len(elements),
        max_num_neighbors=0,
        equivariance_invariance_group=str(args.get("equivariance_invariance_group", "O(3)")),
        precision=precision,
        priors=priors,
        linear_activation=False,
        readout="gated",
        readout_widths=tuple(int(w) for _, w in gated),
        self_loops=False,
        element_types=elements,
        source_format="matgl",
        embedding_convention=f"matgl-{used}",
        energy_unit="eV",
        length_unit="A",
    )
    config.validate()
    how = "from the file" if convention == "auto" else "by matgl_convention"
    desc = (
        f"matgl TensorNet folder {folder} (TensorNet @model_version {version}; embedding "
        f"convention matgl-{used}, {how})"
    )
    return config, new, desc
