"""FLUX adapter: diffusers' FluxTransformer2DModel as a VelocityModel.

The packed token form [B, HW/4, 4C] and the img/txt position ids exist only inside this module.
"""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from fastinv.conditioning import DEFAULT_EMBEDDED_GUIDANCE, Conditioning
from fastinv.models.base import TransformerVelocity


def flux_velocity(
    network: torch.nn.Module,
    dtype: torch.dtype,
    z: torch.Tensor,
    sigma: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_embeds: torch.Tensor | None,
    img_ids: torch.Tensor | None = None,
    guidance: torch.Tensor | None = None,
) -> torch.Tensor:
    """v = FluxTransformer2DModel(pack(z), timestep = σ, img_ids, txt_ids, text, pooled[, guidance]),
    unpacked to z's [B, C, H, W], inputs cast to the network's `dtype`: the one definition
    `FluxVelocity.predict` and the exported graph (`fastinv.export.graphs`) share.

    img_ids: the packed tokens' position ids (`FluxPipeline._prepare_latent_image_ids` of z's size; None:
    built here, as in an exported graph); guidance: [B] float32, for guidance-distilled (dev) transformers.
    """
    batch, channels, height, width = z.shape
    packed = FluxPipeline._pack_latents(z.to(dtype), batch, channels, height, width)
    if img_ids is None:
        img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, z.device, dtype)
    txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=z.device, dtype=dtype)
    v = network(
        hidden_states=packed,
        encoder_hidden_states=prompt_embeds.to(dtype),
        pooled_projections=None if pooled_embeds is None else pooled_embeds.to(dtype),
        timestep=sigma.to(dtype),
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=guidance,
        return_dict=False,
    )[0]
    # FluxPipeline._unpack_latents calls int() on the sizes, which would freeze them in an exported graph
    v = v.view(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return v.reshape(batch, channels, height, width)


class FluxVelocity(TransformerVelocity):
    """v = FluxTransformer2DModel(pack(z), timestep = σ, ids, text, pooled[, guidance]), unpacked.

    FluxPipeline passes timestep/1000 = σ; the transformer multiplies σ and guidance by 1000 itself.
    Image position ids are built on the host once per latent size and kept on the device, so a step
    replayed from a CUDA graph makes no host-to-device copy.
    """

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__(network, dtype)
        self._image_ids: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def image_ids(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """[height·width/4, 3] ids of the packed 2×2 tokens of a height × width latent."""
        key = (height, width, device)
        if key not in self._image_ids:
            ids = FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, device, self.dtype)
            self._image_ids[key] = ids
        return self._image_ids[key]

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.network.config.guidance_embeds)

    def predict(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor | None,
        cond: Conditioning,
    ) -> torch.Tensor:
        guidance = None
        if self.guidance_embeds:
            value = DEFAULT_EMBEDDED_GUIDANCE if cond.embedded_guidance is None else cond.embedded_guidance
            guidance = torch.full((z.shape[0],), value, device=z.device, dtype=torch.float32)
        img_ids = self.image_ids(z.shape[-2], z.shape[-1], z.device)
        return flux_velocity(
            self.network, self.dtype, z, sigma, prompt_embeds, pooled_embeds, img_ids, guidance
        )


def packed_seq_len(latent_height: int, latent_width: int) -> int:
    """Number of packed 2×2 latent tokens: the image_seq_len of FLUX's dynamic schedule shift."""
    return (latent_height // 2) * (latent_width // 2)
