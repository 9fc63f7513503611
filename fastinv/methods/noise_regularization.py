"""ReNoise's editability regularisers of the predicted noise (after pix2pix-zero), in RF notation.

In rectified flow the noise implied by a velocity at (z, σ) is ε̂ = z + (1 − σ)·v and the clean estimate
x̂0 = z − σ·v, so v = ε̂ − x̂0. Regularising ε̂ (x̂0 held) and mapping back gives a corrected velocity.
Scaled as the authors' code (ReNoise, after pix2pix-zero), so that their λ_ac = 20 and λ_kl = 0.065 mean
what the paper means. Each round: one KL gradient step on ε̂ (gradient clipped to ±100), then `rolls`
auto-correlation steps, each with the gradient divided by `rolls` (not clipped):
- auto-correlation (pairwise) loss, per channel: Σ over an average-pooled pyramid (down to a height of
  8 px) of mean(ε̂·roll(ε̂, s))² along H and along W, a fresh random s ∈ [0, H/2) per channel and level:
  white noise has none;
- patch KL: Σ over 4×4 patches and channels of |KL| between the Gaussian statistics (mean, unbiased
  variance + 1e-6) of ε̂ and of a reference noise prediction.
The losses sum over the batch, so every sample's gradient is its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PATCH = 4
MIN_PYRAMID_HEIGHT = 8
KL_GRAD_CLIP = 100.0
VAR_EPS = 1e-6


def auto_correlation_loss(noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Σ over samples, channels and pyramid levels of mean_HW(ε·roll(ε, s))² along H and along W.

    noise: [B, C, H, W]. Shifts are drawn channel by channel, level by level (the authors' order).
    """
    loss = noise.new_zeros(())
    for channel in range(noise.shape[1]):
        level = noise[:, channel : channel + 1]
        while True:
            shift = int(torch.randint(max(1, level.shape[-2] // 2), (), generator=generator))
            for dim in (-2, -1):
                loss = (
                    loss
                    + (level * torch.roll(level, shifts=shift, dims=dim)).mean(dim=(1, 2, 3)).square().sum()
                )
            if level.shape[-2] <= MIN_PYRAMID_HEIGHT:
                break
            level = F.avg_pool2d(level, kernel_size=2)
    return loss


def patch_kl_loss(noise: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Σ over samples, 4×4 patches and channels of |KL(N(μ, s²) ‖ N(μ_ref, s_ref²))|, without the ½
    (as the authors): |log(s_ref²/s²) + (s² + (μ − μ_ref)²)/s_ref² − 1|. noise, reference: [B, C, H, W]."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = x.shape[:2]
        patches = F.unfold(x, kernel_size=PATCH, stride=PATCH).view(b, c, PATCH * PATCH, -1)
        return patches.mean(dim=2), patches.var(dim=2)

    mean, var = stats(noise)
    mean_ref, var_ref = stats(reference)
    kl = (
        torch.log((var_ref + VAR_EPS) / (var + VAR_EPS))
        + (var + (mean - mean_ref).square()) / (var_ref + VAR_EPS)
        - 1
    )
    return kl.abs().sum()


@torch.enable_grad()
def regularize_noise(
    noise: torch.Tensor,
    reference: torch.Tensor | None,
    *,
    lambda_ac: float,
    lambda_kl: float,
    steps: int,
    rolls: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """`steps` rounds of: one KL step (if lambda_kl and a reference), then `rolls` auto-correlation steps."""

    def gradient(x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        leaf = x.detach().requires_grad_(True)
        return torch.autograd.grad(loss_fn(leaf), leaf)[0]

    for _ in range(steps):
        if lambda_kl > 0 and reference is not None:
            grad = gradient(noise, lambda x: patch_kl_loss(x, reference))
            noise = (noise - lambda_kl * grad.clamp(-KL_GRAD_CLIP, KL_GRAD_CLIP)).detach()
        if lambda_ac > 0:
            for _ in range(rolls):
                grad = gradient(noise, lambda x: auto_correlation_loss(x, generator))
                noise = (noise - lambda_ac * grad / rolls).detach()
    return noise
