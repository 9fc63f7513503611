"""ReNoise's editability regularisers of the predicted noise (after pix2pix-zero), in RF notation.

In rectified flow the noise implied by a velocity at (z, σ) is ε̂ = z + (1 − σ)·v and the clean estimate
x̂0 = z − σ·v, so v = ε̂ − x̂0. Regularising ε̂ (x̂0 held) and mapping back gives a corrected velocity.
Two terms, each minimised by a few plain gradient steps on ε̂ (gradients clipped to ±100 as in ReNoise):
- auto-correlation (pairwise) loss: squared mean of ε̂·roll(ε̂) over random shifts, per channel, on an
  average-pooled pyramid down to 8 px: white noise has none;
- patch KL: KL divergence between per-patch Gaussian statistics of ε̂ and of a reference noise prediction
  (the model's ε at the forward-noised input, (1 − σ)·x0 + σ·ξ), per 4×4 patch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PATCH = 4
MIN_PYRAMID_SIDE = 8


def auto_correlation_loss(noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Σ over channels and pyramid levels of mean(ε·roll(ε, s))² along H and W, random s < side/2."""
    loss = noise.new_zeros(())
    level = noise
    while True:
        shift = int(torch.randint(max(1, level.shape[-1] // 2), (), generator=generator))
        for dim in (-2, -1):
            loss = (
                loss + (level * torch.roll(level, shifts=shift, dims=dim)).mean(dim=(0, 2, 3)).square().sum()
            )
        if min(level.shape[-2:]) <= MIN_PYRAMID_SIDE:
            return loss
        level = F.avg_pool2d(level, kernel_size=2)


def patch_kl_loss(noise: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over 4×4 patches of KL(N(μ, s²) ‖ N(μ_ref, s_ref²)) of the two tensors' patch statistics."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = F.unfold(x, kernel_size=PATCH, stride=PATCH)
        return patches.mean(dim=1), patches.var(dim=1) + 1e-6

    mean, var = stats(noise)
    mean_ref, var_ref = stats(reference)
    return 0.5 * (torch.log(var_ref / var) + (var + (mean - mean_ref).square()) / var_ref - 1).mean()


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

    def descend(
        x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], weight: float
    ) -> torch.Tensor:
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(leaf), leaf)
        return (x - weight * grad.clamp(-100, 100)).detach()

    for _ in range(steps):
        if lambda_kl > 0 and reference is not None:
            noise = descend(noise, lambda x: patch_kl_loss(x, reference), lambda_kl)
        if lambda_ac > 0:
            for _ in range(rolls):
                noise = descend(noise, lambda x: auto_correlation_loss(x, generator), lambda_ac)
    return noise
