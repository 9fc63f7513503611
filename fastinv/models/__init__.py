"""Model adapters: diffusers SD3 / FLUX folders as VelocityModels with their codec and prompt encoder."""

from fastinv.models.base import FlowModel, LatentCodec, PromptEncoder, TransformerVelocity, VelocityModel
from fastinv.models.loading import DEFAULT_MODEL, EXAMPLE_IMAGE, load_model

__all__ = [
    "DEFAULT_MODEL",
    "EXAMPLE_IMAGE",
    "FlowModel",
    "LatentCodec",
    "PromptEncoder",
    "TransformerVelocity",
    "VelocityModel",
    "load_model",
]
