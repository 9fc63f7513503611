"""Stable Diffusion 3 adapter: diffusers' SD3Transformer2DModel as a VelocityModel."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.models.base import TransformerVelocity


class SD3Velocity(TransformerVelocity):
    """v = SD3Transformer2DModel(z, timestep = σ·1000, text, pooled); latents stay [B, C, H, W]."""

    def predict(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor | None,
        cond: Conditioning,
    ) -> torch.Tensor:
        return self.network(
            hidden_states=z,
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled_embeds,
            timestep=(sigma * 1000).to(self.dtype),
            return_dict=False,
        )[0]

    @property
    def max_side(self) -> int:
        """Largest latent side the cropped positional embedding covers."""
        config = self.network.config
        return config.pos_embed_max_size * config.patch_size
