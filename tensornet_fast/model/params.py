"""The parameter tree of a TensorNet model, named exactly like torchmd-net's modules so a
torchmd-net state dict (without its ``model.`` prefix) loads with ``load_state_dict(strict=True)``.

These modules only hold weights; the computation lives in the backends."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, PriorSpec


def _linear(fan_in: int, fan_out: int, dtype: torch.dtype, bias: bool = True) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias=bias, dtype=dtype)


class RadialBasis(nn.Module):
    """expnorm: ``means``/``betas``; gauss: ``offset``/``coeff`` (parameters when trainable);
    smooth_bessel (matgl): no weights, the basis is fixed by K and the cutoff."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        k, dtype = config.num_rbf, config.dtype
        if config.rbf_type == "smooth_bessel":
            return
        names = ("means", "betas") if config.rbf_type == "expnorm" else ("offset", "coeff")
        shapes = ((k,), (k,)) if config.rbf_type == "expnorm" else ((k,), ())
        for name, shape in zip(names, shapes):
            tensor = torch.zeros(shape, dtype=dtype)
            if config.trainable_rbf:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)


class TensorEmbeddingParams(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        f, k, dtype = config.embedding_dimension, config.num_rbf, config.dtype
        self.distance_proj1 = _linear(k, f, dtype)
        self.distance_proj2 = _linear(k, f, dtype)
        self.distance_proj3 = _linear(k, f, dtype)
        self.emb = nn.Embedding(config.max_z, f, dtype=dtype)
        self.emb2 = _linear(2 * f, f, dtype)
        self.linears_tensor = nn.ModuleList(_linear(f, f, dtype, bias=False) for _ in range(3))
        self.linears_scalar = nn.ModuleList(
            [_linear(f, 2 * f, dtype), _linear(2 * f, 3 * f, dtype)]
        )
        self.init_norm = nn.LayerNorm(f, dtype=dtype)


class InteractionParams(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        f, k, dtype = config.embedding_dimension, config.num_rbf, config.dtype
        self.linears_scalar = nn.ModuleList(
            [_linear(k, f, dtype), _linear(f, 2 * f, dtype), _linear(2 * f, 3 * f, dtype)]
        )
        self.linears_tensor = nn.ModuleList(_linear(f, f, dtype, bias=False) for _ in range(6))


class DistanceParams(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.register_buffer("box", torch.zeros(3, 3, dtype=config.dtype))


class RepresentationParams(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        f, dtype = config.embedding_dimension, config.dtype
        self.distance_expansion = RadialBasis(config)
        self.tensor_embedding = TensorEmbeddingParams(config)
        self.layers = nn.ModuleList(InteractionParams(config) for _ in range(config.num_layers))
        self.linear = _linear(3 * f, f, dtype)
        self.out_norm = nn.LayerNorm(3 * f, dtype=dtype)
        self.distance = DistanceParams(config)


class ScalarHeadParams(nn.Module):
    """``output_network.layers.{0,2,...}``: Linear F->F/2, act, [Linear, act]*h, Linear F/2->1."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        f, dtype = config.embedding_dimension, config.dtype
        layers: list[nn.Module] = [_linear(f, f // 2, dtype), nn.Identity()]
        for _ in range(config.output_hidden_layers):
            layers += [_linear(f // 2, f // 2, dtype), nn.Identity()]
        layers.append(_linear(f // 2, 1, dtype))
        self.layers = nn.Sequential(*layers)


class GatedHeadParams(nn.Module):
    """matgl's gated readout (``final_layer.gated``): ``layers`` and ``gates``, each Linear
    widths F -> w_1 -> ... -> w_n (``config.readout_widths``) at indices 0, 2, 4, ... with the
    activations between them (no weights) at the odd indices."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dtype = config.dtype
        for name in ("layers", "gates"):
            mods: list[nn.Module] = []
            fan_in = config.embedding_dimension
            for k, width in enumerate(config.readout_widths):
                if k:
                    mods.append(nn.Identity())
                mods.append(_linear(fan_in, width, dtype))
                fan_in = width
            setattr(self, name, nn.Sequential(*mods))


class OutputParams(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.readout == "gated":
            self.gated = GatedHeadParams(config)
        else:
            self.output_network = ScalarHeadParams(config)


class AtomrefParams(nn.Module):
    def __init__(self, spec: PriorSpec, config: ModelConfig):
        super().__init__()
        n = int(spec.args.get("max_z") or 100)
        self.register_buffer("initial_atomref", torch.zeros(n, 1, dtype=config.dtype))
        self.atomref = nn.Embedding(n, 1, dtype=config.dtype)
        self.enable = bool(spec.args.get("enable", True))


class ZBLParams(nn.Module):
    def __init__(self, spec: PriorSpec, config: ModelConfig):
        super().__init__()
        n = len(spec.args.get("atomic_number") or []) or config.max_z
        self.register_buffer("atomic_number", torch.zeros(n, dtype=torch.long))
        self.cutoff_distance = float(spec.args["cutoff_distance"])
        self.distance_scale = float(spec.args["distance_scale"])
        self.energy_scale = float(spec.args["energy_scale"])


class D2Params(nn.Module):
    def __init__(self, spec: PriorSpec, config: ModelConfig):
        super().__init__()
        n = len(spec.args.get("atomic_number") or []) or config.max_z
        self.register_buffer("Z_map", torch.zeros(n, dtype=torch.long))
        self.register_buffer("C_6", torch.zeros(55, dtype=config.dtype))
        self.register_buffer("R_r", torch.zeros(55, dtype=config.dtype))
        self.cutoff_distance = float(spec.args["cutoff_distance"])
        self.distance_scale = float(spec.args["distance_scale"])
        self.energy_scale = float(spec.args["energy_scale"])


PRIOR_PARAMS = {"Atomref": AtomrefParams, "ZBL": ZBLParams, "D2": D2Params}
