"""Stable Diffusion 3 adapter: diffusers' SD3Transformer2DModel as a VelocityModel."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.models.base import TransformerVelocity


def sd3_velocity(
    network: torch.nn.Module,
    dtype: torch.dtype,
    z: torch.Tensor,
    sigma: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_embeds: torch.Tensor | None,
) -> torch.Tensor:
    """v = SD3Transformer2DModel(z, timestep = σ·1000, text, pooled), inputs cast to the network's `dtype`:
    the one definition `SD3Velocity.predict` and the exported graph (`fastinv.export.graphs`) share."""
    return network(
        hidden_states=z.to(dtype),
        encoder_hidden_states=prompt_embeds.to(dtype),
        pooled_projections=None if pooled_embeds is None else pooled_embeds.to(dtype),
        timestep=(sigma * 1000).to(dtype),
        return_dict=False,
    )[0]


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
        return sd3_velocity(self.network, self.dtype, z, sigma, prompt_embeds, pooled_embeds)

    @property
    def max_side(self) -> int:
        """Largest latent side the cropped positional embedding covers."""
        config = self.network.config
        return config.pos_embed_max_size * config.patch_size
