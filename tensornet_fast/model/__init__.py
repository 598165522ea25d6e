"""The model: hyper-parameters, checkpoint formats, the parameter tree, priors and the
user-facing :class:`TensorNetModel` (``load_model``)."""

from .config import ModelConfig, PriorSpec
from .formats.torchmdnet import load_checkpoint
from .module import NAMED_MODELS, TensorNetModel, build_model, load_model

__all__ = [
    "NAMED_MODELS",
    "ModelConfig",
    "PriorSpec",
    "TensorNetModel",
    "build_model",
    "load_checkpoint",
    "load_model",
]
