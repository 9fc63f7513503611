"""Model adapters: diffusers SD3 / FLUX folders as VelocityModels with their codec and prompt encoder."""

from fastinv.models.base import FlowModel, LatentCodec, PromptEncoder, TransformerVelocity, VelocityModel
from fastinv.models.loading import load_model

__all__ = ["FlowModel", "LatentCodec", "PromptEncoder", "TransformerVelocity", "VelocityModel", "load_model"]
