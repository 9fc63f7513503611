"""The forward ODE sampler: regenerate a clean latent from noise along a sigma schedule."""

from __future__ import annotations

import torch

from fastinv import kernels
from fastinv.conditioning import Conditioning
from fastinv.methods.base import NFECounter, StepCallback, sigma_batch, step_size
from fastinv.models.base import VelocityModel
from fastinv.runtime.fast_path import graphed


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

    def euler_step(z: torch.Tensor, sigma: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        v, v_null = model.branches(z, sigma, cond)
        # Euler method, with the CFG combine fused into the update
        return kernels.cfg_euler_update(z, v, h, v_null=v_null, guidance=cond.guidance_scale)

    step = graphed(euler_step, model, z.device)
    z = z.float()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        z = step(z, sigma_batch(sigma, z), step_size(sigma, sigma_next, z))
        if callback is not None:
            callback(
                {"i": i, "sigma": float(sigma), "sigma_next": float(sigma_next), "z": z, "nfe": model.calls}
            )
    return z
