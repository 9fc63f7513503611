"""Second-order midpoint inversion: RF-Solver (Wang et al., 2024) and FireFlow (Deng et al., 2024)."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.methods.base import InversionResult, InversionRun, StepCallback, sigma_batch, upward_steps
from fastinv.models.base import VelocityModel
from fastinv.run_config import RunConfig


@torch.no_grad()
def invert_rf_solver(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
    config: RunConfig | None = None,
) -> InversionResult:
    """Explicit midpoint rule upward in σ, 2 NFE/step; h = σ_i − σ_{i+1} > 0:

        v1 = v(z, σ_{i+1});  z_mid = z + (h/2)·v1;  v_mid = v(z_mid, σ_{i+1} + h/2);  z_i = z + h·v_mid.

    RF-Solver writes the update as the Taylor form z + h·v1 + (h²/2)·(v_mid − v1)/(h/2), which is the same
    expression; the midpoint form is used here (no division by h).
    """
    run = InversionRun(model, x0, callback, keep_trajectory, config)
    z = x0.float()
    for i, sigma, sigma_next in upward_steps(sigmas):
        h = float(sigma_next - sigma)
        v1 = run.model(z, sigma_batch(sigma, z), cond)
        v_mid = run.model(z + h / 2 * v1, sigma_batch((sigma + sigma_next) / 2, z), cond)
        z = z + h * v_mid
        run.step(i, sigma, sigma_next, z)
    return run.result(z)


@torch.no_grad()
def invert_fireflow(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
    config: RunConfig | None = None,
) -> InversionResult:
    """The midpoint rule of `invert_rf_solver` with v1 reused from the previous step: N+1 NFE in all.

        v1 = v_mid of the previous step, i.e. v(z_mid_prev, (σ_{i+2} + σ_{i+1})/2), the velocity at the
             previous step's midpoint standing in for v(z, σ_{i+1}); v(z, σ_{i+1}) on the first step only;
        z_mid = z + (h/2)·v1;  v_mid = v(z_mid, σ_{i+1} + h/2);  z_i = z + h·v_mid;  cache v_mid.

    v1 is off by O(h), so z_mid is off by O(h²) and the scheme stays second order (FireFlow's argument).
    """
    run = InversionRun(model, x0, callback, keep_trajectory, config)
    z = x0.float()
    v_mid: torch.Tensor | None = None
    for i, sigma, sigma_next in upward_steps(sigmas):
        h = float(sigma_next - sigma)
        v1 = run.model(z, sigma_batch(sigma, z), cond) if v_mid is None else v_mid
        v_mid = run.model(z + h / 2 * v1, sigma_batch((sigma + sigma_next) / 2, z), cond)
        z = z + h * v_mid
        run.step(i, sigma, sigma_next, z)
    return run.result(z)
