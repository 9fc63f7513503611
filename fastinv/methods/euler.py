"""Euler inversion: the rectified-flow analogue of DDIM inversion, 1 NFE per step."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.methods.base import InversionResult, InversionRun, StepCallback, sigma_batch, upward_steps
from fastinv.models.base import VelocityModel


@torch.no_grad()
def invert_euler(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
) -> InversionResult:
    """Walk the sampling schedule backwards, σ_N = 0 → σ_0, evaluating v at the known point.

    x0: [B, C, H, W] clean latents; sigmas: N+1 float64 sigmas in sampling order (1 → 0).
    Step: z(σ_i) = z(σ_{i+1}) + (σ_i − σ_{i+1})·v(z(σ_{i+1}), σ_{i+1}).
    """
    run = InversionRun(model, x0, callback, keep_trajectory)
    z = x0.float()
    for i, sigma, sigma_next in upward_steps(sigmas):
        v = run.model(z, sigma_batch(sigma, z), cond)
        # Euler step, upward in σ
        z = z + float(sigma_next - sigma) * v
        run.step(i, sigma, sigma_next, z)
    return run.result(z)
