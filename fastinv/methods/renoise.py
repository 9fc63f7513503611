"""ReNoise (Garibi et al., ECCV 2024): fixed-point refinement of each Euler inversion step."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.kernels.reference import per_sample
from fastinv.methods.base import (
    InversionResult,
    InversionRun,
    StepCallback,
    sigma_batch,
    step_size,
    upward_steps,
)
from fastinv.methods.noise_regularization import regularize_noise
from fastinv.models.base import VelocityModel
from fastinv.run_config import RunConfig


@torch.no_grad()
def invert_renoise(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
    config: RunConfig | None = None,
    iterations: int = 4,
    average_last: int = 2,
    lambda_ac: float = 0.0,
    lambda_kl: float = 0.0,
    regularization_steps: int = 4,
    ac_rolls: int = 5,
    seed: int = 0,
) -> InversionResult:
    """Solve each implicit step z_i = z_{i+1} + h·v(z_i, σ_i) by fixed-point iteration. K+1 NFE/step.

    h = σ_i − σ_{i+1} > 0. Euler guess z^0 = z_{i+1} + h·v(z_{i+1}, σ_{i+1}), then K = `iterations`
    renoising steps z^{j+1} = z_{i+1} + h·v(z^j, σ_i) (velocity at the target σ and the current iterate);
    z_i = mean of the last m = `average_last` iterates z^{K−m+1} … z^K (all when K+1 < m; K = 0 is Euler),
    accumulated as a weighted running sum (weight 1/m) in the fused update kernel.
    Averaging iterates equals the paper's averaging of the noise predictions (the step is affine in v).

    The first guess's velocity is taken at the known σ_{i+1} (the authors' code: at the target σ_i).

    Editability regularisers (off by default; the paper's SD settings are lambda_ac=20, lambda_kl=0.065,
    4 steps, 5 rolls), placed as in the authors' code: the average is of the raw velocities; each velocity
    in the averaging window that drives a further iterate is regularised first, and so is the average
    that makes the step. Regularising maps v at (z, σ) to its implied noise ε̂ = z + (1 − σ)·v, runs
    `noise_regularization.regularize_noise` on it with x̂0 = z − σ·v held, and maps back. lambda_kl > 0
    costs one more NFE per step: the reference noise at the forward-noised (1 − σ_i)·x0 + σ_i·ξ, with one
    ξ per inversion drawn from `seed`. The paper's first-step schedule and noise correction are not included.
    """
    if iterations < 0 or average_last < 1:
        raise FastinvError(f"ReNoise needs iterations >= 0, average_last >= 1: {iterations}, {average_last}")
    run = InversionRun(model, x0, callback, keep_trajectory, config)
    generator = torch.Generator().manual_seed(seed)
    # the reference's noise: one draw per inversion, as the authors
    xi = torch.randn(x0.shape, generator=generator).to(x0.device) if lambda_kl > 0 else None
    clean_x0 = x0.float()
    regularize = lambda_ac > 0 or lambda_kl > 0
    averaged = min(average_last, iterations + 1)
    weights = [1 / averaged if j > iterations - averaged else 0.0 for j in range(iterations + 1)]

    def renoise_step(
        z: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor:
        iterate, average = run.kernels.renoise_update(
            z, run.model(z, sigma, cond), h, torch.zeros_like(z), weights[0]
        )
        for weight in weights[1:]:
            # renoise: re-evaluate the velocity at the current estimate of z(σ_i)
            v = run.model(iterate, target, cond)
            iterate, average = run.kernels.renoise_update(z, v, h, average, weight)
        return average

    def regularized_step(
        z: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor:
        s = per_sample(target, z)
        reference = None
        if lambda_kl > 0:
            noised = (1 - s) * clean_x0 + s * xi
            reference = noised + (1 - s) * run.model(noised, target, cond)

        def regularized(noise: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
            options = {"lambda_ac": lambda_ac, "lambda_kl": lambda_kl, "steps": regularization_steps}
            return regularize_noise(noise, reference, rolls=ac_rolls, generator=generator, **options) - clean

        h_z = per_sample(h, z)
        point, at = z, per_sample(sigma, z)
        noise_average, clean_average = torch.zeros_like(z), torch.zeros_like(z)
        for j, weight in enumerate(weights):
            v = run.model(point, sigma if j == 0 else target, cond)
            noise, clean = point + (1 - at) * v, point - at * v  # v = ε̂ − x̂0
            # the average of the raw predictions (ε̂ and x̂0 are affine in v: their mean gives the mean v)
            noise_average, clean_average = noise_average + weight * noise, clean_average + weight * clean
            if weight and j < iterations:
                v = regularized(noise, clean)
            point, at = z + h_z * v, s
        return z + h_z * regularized(noise_average, clean_average)

    # the regularisers draw host randomness: never captured
    step = regularized_step if regularize else run.captured(renoise_step)
    z = clean_x0
    for i, sigma, sigma_next in upward_steps(sigmas):
        h = step_size(sigma, sigma_next, z)
        z = step(z, sigma_batch(sigma, z), sigma_batch(sigma_next, z), h)
        run.step(i, sigma, sigma_next, z)
    return run.result(z)
