"""GNRI (Samuel et al., "Lightning-Fast Image Inversion and Editing"): guided Newton–Raphson per step.

As in the authors' code, the gradient of the scalar objective holds the model output fixed (no backprop).
Changed for RF: ‖r‖₂ instead of ‖r‖₁ (with v fixed, the ‖r‖₁ Newton step moves every element by the same
amount; the ‖r‖₂ one is exactly z ← F(z)); the prior multiplies ‖r‖ instead of being added (an added
Gaussian NLL, ≈ ½ per element, never vanishes, so the Newton step for O = 0 overshoots by λ·G/‖r‖: tens
of times at 50 steps); iterations start from the Euler guess, not z_{i+1}.
As the authors: the prior's factor is detached in the Newton gradient, and a step returns F(best iterate)
(one more fixed-point map, free: v(best) is known). Measured on the shipped model (6 held-out photos,
PSNR at 10/25/50 steps): 24.10/37.11/48.68 dB returning the best iterate with the prior's gradient,
28.42/48.00/65.37 dB as the authors. With the factor detached it cancels in the Newton step
(O·∇O/‖∇O‖² = ‖r‖·∇‖r‖/‖∇‖r‖‖²): the prior only decides which iterate is kept.
"""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods.base import (
    InversionResult,
    InversionRun,
    StepCallback,
    keep_best,
    sigma_batch,
    upward_steps,
)
from fastinv.models.base import VelocityModel
from fastinv.run_config import RunConfig


def gnri_objective(
    z: torch.Tensor,
    z_prev: torch.Tensor,
    v: torch.Tensor,
    h: float,
    sigma: float,
    x0: torch.Tensor,
    prior_weight: float,
) -> torch.Tensor:
    """Per-sample scalar objective [B]: O(z) = ‖r‖_rms·(1 + λ·G(z)), v = v(z, σ) given (held fixed).

    r = z − z_prev − h·v is the residual of the implicit step; G(z) = ‖z − (1−σ)·x0‖² / (2σ²·D) is the
    Gaussian prior term: the negative log-density, per element, of the forward marginal N((1−σ)·x0, σ²I).
    The prior factor is detached (as the authors' code): ∇O = (1 + λ·G)·∇‖r‖_rms.
    """
    r = (z - z_prev - h * v).flatten(1)
    prior = (z - (1 - sigma) * x0).flatten(1).square().mean(1) / (2 * sigma**2)
    return torch.linalg.vector_norm(r, dim=1) / r.shape[1] ** 0.5 * (1 + prior_weight * prior.detach())


@torch.no_grad()
def invert_gnri(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
    config: RunConfig | None = None,
    iterations: int = 1,
    prior_weight: float = 0.1,
    eps: float = 1e-12,
) -> InversionResult:
    """Solve z_i = F(z_i) = z_{i+1} + h·v(z_i, σ_i), h = σ_i − σ_{i+1}, by Newton steps on a scalar.

    With O(z) = `gnri_objective` (λ = `prior_weight`) and K = `iterations`, per step:
    z^0 = z_{i+1} + h·v(z_{i+1}, σ_{i+1}) (the Euler guess); z^{k+1} = z^k − O(z^k)·g / (‖g‖² + eps), the
    minimum-norm Newton step for O(z) = 0, g = ∇_z O(z^k) with v(z^k, σ_i) held fixed (no backprop through
    the model); z* = the iterate z^0 … z^K of lowest O, per sample, and z_i = F(z*) = z_{i+1} + h·v(z*, σ_i).
    With λ = 0 the Newton step is exactly z^{k+1} = F(z^k); the prior multiplies the residual so the roots
    of r are kept. NFE: 1 + N·(K+1), i.e. 2 per step at the default K = 1 (plus one at the start): each
    iterate's v(·, σ_i) is one call, and v(z*, σ_i) is reused as the next step's Euler velocity (not
    recomputed at F(z*)). K = 0 is one warm-started fixed-point correction per step (`warm_fixed_point`,
    but its first step starts from v at the known σ).
    The callback dict adds "objective": O of each chosen latent, [B].
    """
    if iterations < 0 or prior_weight < 0 or eps <= 0:
        raise FastinvError(
            f"GNRI needs iterations >= 0, prior_weight >= 0, eps > 0: {iterations}, {prior_weight}, {eps}"
        )
    run = InversionRun(model, x0, callback, keep_trajectory, config)
    x0 = x0.float()
    z = x0
    v = run.model(z, sigma_batch(sigmas[-1], z), cond)  # v(z_N, σ_N); then the chosen iterate's, reused
    for i, sigma, sigma_next in upward_steps(sigmas):
        h, target = float(sigma_next - sigma), sigma_batch(sigma_next, z)
        z_prev, z = z, z + h * v
        iterate, best = z, torch.full((z.shape[0],), torch.inf, device=z.device)
        for k in range(iterations + 1):
            v_k = run.model(iterate, target, cond)
            with torch.enable_grad():
                leaf = iterate.detach().requires_grad_(k < iterations)
                objective = gnri_objective(leaf, z_prev, v_k, h, float(sigma_next), x0, prior_weight)
                grad = torch.autograd.grad(objective.sum(), leaf)[0] if k < iterations else None
            # keep the best iterate so far, per sample
            best, (z, v) = keep_best(objective.detach(), best, (iterate, v_k), (z, v))
            if grad is not None:
                # Newton–Raphson on the scalar O: the smallest Δ with O(z) + ∇O·Δ = 0
                step = objective.detach() / (grad.flatten(1).square().sum(1) + eps)
                iterate = iterate - step[:, None, None, None] * grad
        z = z_prev + h * v  # F(best iterate)
        run.step(i, sigma, sigma_next, z, objective=best)
    return run.result(z)
