"""Pixel ↔ latent codecs: a diffusers AutoencoderKL, or the identity for pixel-space models."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from fastinv.errors import FastinvError


def _finite(x: torch.Tensor, what: str, dtype: torch.dtype) -> torch.Tensor:
    """`x`, or a one-line error when it holds NaN or inf (checked before any clamp could hide an inf)."""
    if not bool(torch.isfinite(x).all()):
        remedy = "fp16 overflow: use --dtype bf16 or fp32" if dtype == torch.float16 else "check the input"
        raise FastinvError(f"the VAE {what} non-finite values (NaN or inf): {remedy}")
    return x


class VaeCodec:
    """AutoencoderKL with the model's normalisation: latents = (mode(E(x)) − shift_factor) · scaling_factor.

    The posterior mode (not a sample) is used, so encoding is deterministic.
    """

    def __init__(self, vae: AutoencoderKL, dtype: torch.dtype) -> None:
        self.vae = vae
        self.dtype = dtype
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = vae.config.latent_channels
        self.scaling = vae.config.scaling_factor
        self.shift = vae.config.shift_factor or 0.0

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] in [-1, 1] → latents [B, C, H/f, W/f] float32."""
        device = next(self.vae.parameters()).device
        posterior = self.vae.encode(pixels.to(device, self.dtype)).latent_dist
        return _finite(((posterior.mode() - self.shift) * self.scaling).float(), "encoded", self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, h, w] → pixels [B, 3, h·f, w·f] float32 in [-1, 1] (clamped)."""
        z = latents.to(self.dtype) / self.scaling + self.shift
        return _finite(self.vae.decode(z, return_dict=False)[0].float(), "decoded", self.dtype).clamp(-1, 1)


class IdentityCodec:
    """Pixel-space models: the latent is the RGB image itself in [-1, 1]."""

    scale_factor = 1
    channels = 3

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float().clamp(-1, 1)
