"""ReNoise (Garibi et al., ECCV 2024): fixed-point refinement of each Euler inversion step."""

from __future__ import annotations

from collections import deque

import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods.base import InversionResult, InversionRun, StepCallback, sigma_batch
from fastinv.models.base import VelocityModel


@torch.no_grad()
def invert_renoise(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
    iterations: int = 4,
    average_last: int = 2,
) -> InversionResult:
    """Solve each implicit step z_i = z_{i+1} + h·v(z_i, σ_i) by fixed-point iteration. K+1 NFE/step.

    h = σ_i − σ_{i+1} > 0. Euler guess z^0 = z_{i+1} + h·v(z_{i+1}, σ_{i+1}), then K = `iterations`
    renoising steps z^{j+1} = z_{i+1} + h·v(z^j, σ_i) (velocity at the target σ and the current iterate);
    z_i = mean of the last m = `average_last` iterates z^{K−m+1} … z^K (all when K+1 < m; K = 0 is Euler).
    Averaging iterates equals the paper's averaging of the noise predictions (the step is affine in v).
    The paper's noise regularisation (pairwise/KL), its first-step schedule and noise correction are
    not included.
    """
    if iterations < 0 or average_last < 1:
        raise FastinvError(f"ReNoise needs iterations >= 0, average_last >= 1: {iterations}, {average_last}")
    run = InversionRun(model, x0, callback, keep_trajectory)
    z = x0.float()
    for i in reversed(range(len(sigmas) - 1)):
        sigma, sigma_next = sigmas[i + 1], sigmas[i]
        h, target = float(sigma_next - sigma), sigma_batch(sigma_next, z)
        iterate = z + h * run.model(z, sigma_batch(sigma, z), cond)
        recent = deque([iterate], maxlen=average_last)
        for _ in range(iterations):
            # renoise: re-evaluate the velocity at the current estimate of z(σ_i)
            iterate = z + h * run.model(iterate, target, cond)
            recent.append(iterate)
        z = torch.stack(tuple(recent)).mean(dim=0)
        run.step(i, sigma, sigma_next, z)
    return run.result(z)
