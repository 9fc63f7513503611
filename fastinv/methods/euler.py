"""Euler inversion: the rectified-flow analogue of DDIM inversion, 1 NFE per step."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.methods.base import (
    InversionResult,
    InversionRun,
    StepCallback,
    sigma_batch,
    step_size,
    upward_steps,
)
from fastinv.models.base import VelocityModel
from fastinv.run_config import RunConfig


@torch.no_grad()
def invert_euler(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
    config: RunConfig | None = None,
) -> InversionResult:
    """Walk the sampling schedule backwards, σ_N = 0 → σ_0, evaluating v at the known point.

    x0: [B, C, H, W] clean latents; sigmas: N+1 float64 sigmas in sampling order (1 → 0).
    Step: z(σ_i) = z(σ_{i+1}) + (σ_i − σ_{i+1})·v(z(σ_{i+1}), σ_{i+1}).
    """
    run = InversionRun(model, x0, callback, keep_trajectory, config)

    def euler_step(z: torch.Tensor, sigma: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        v, v_null = run.model.branches(z, sigma, cond)
        # Euler step, upward in σ (CFG combine fused into the update)
        return run.kernels.cfg_euler_update(z, v, h, v_null=v_null, guidance=cond.guidance_scale)

    step = run.captured(euler_step)
    z = x0.float()
    for i, sigma, sigma_next in upward_steps(sigmas):
        z = step(z, sigma_batch(sigma, z), step_size(sigma, sigma_next, z))
        run.step(i, sigma, sigma_next, z)
    return run.result(z)
