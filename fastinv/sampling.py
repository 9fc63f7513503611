"""The forward ODE sampler: regenerate a clean latent from noise along a sigma schedule."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.methods.base import NFECounter, StepCallback, sigma_batch
from fastinv.models.base import VelocityModel


@torch.no_grad()
def sample_euler(
    model: VelocityModel,
    z: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate dz/dσ = v from σ_0 (noise) to σ_N = 0; returns the clean latent [B, C, H, W] float32.

    Step: z(σ_{i+1}) = z(σ_i) + (σ_{i+1} − σ_i)·v(z(σ_i), σ_i). With cond.guidance_scale != 1 every
    call is a CFG pair batched into one denoiser call (1 NFE of batch 2B).
    """
    model = NFECounter(model)
    z = z.float()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = model(z, sigma_batch(sigma, z), cond)
        # Euler method
        z = z + float(sigma_next - sigma) * v
        if callback is not None:
            callback(
                {"i": i, "sigma": float(sigma), "sigma_next": float(sigma_next), "z": z, "nfe": model.calls}
            )
    return z
