"""Torch references of the fused step kernels: the definitions the Triton kernels are tested against.

Shapes: z, z_prev, average: [B, ...] float32 latent state; velocities / noises: [B, ...] in the network's
dtype (bf16, fp16 or float32); a coefficient (h, eta, weight) is a float or a float32 tensor of shape [B]
or [] (per sample, so one CUDA graph serves every step). Outputs are new float32 tensors shaped like z.
h is a σ difference (not a timestep ×1000).
"""

from __future__ import annotations

import torch

Coefficient = float | torch.Tensor


def per_sample(coefficient: Coefficient, like: torch.Tensor) -> torch.Tensor | float:
    """A [B] / [] coefficient as float32 [B, 1, …, 1] broadcasting over `like` [B, …]; floats pass through."""
    if not isinstance(coefficient, torch.Tensor):
        return coefficient
    coefficient = coefficient.to(like.device, torch.float32)
    if coefficient.dim() == 0:
        return coefficient
    return coefficient.view(-1, *([1] * (like.dim() - 1)))


def guided(v: torch.Tensor, v_null: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """Classifier-free guidance in float32: v_null + g·(v − v_null), or v when there is no null branch."""
    v = v.float()
    if v_null is None:
        return v
    v_null = v_null.float()
    return v_null + guidance * (v - v_null)


def cfg_euler_update(
    z: torch.Tensor,
    v: torch.Tensor,
    h: Coefficient,
    *,
    v_null: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Euler step with the CFG combine: z + h·(v_null + g·(v − v_null)); plain z + h·v without v_null."""
    return z.float() + per_sample(h, z) * guided(v, v_null, guidance)


def fixed_point_update(
    z: torch.Tensor,
    v: torch.Tensor,
    h: Coefficient,
    *,
    v_null: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed-point iterate of the implicit step: f = v_null + g·(v − v_null) (v without v_null), returns
    (z + h·f, f), both float32: the next point to evaluate (or the step's result) and the velocity kept."""
    f = guided(v, v_null, guidance)
    return z.float() + per_sample(h, z) * f, f


def deepinv_update(
    z: torch.Tensor,
    eps: torch.Tensor,
    h: Coefficient,
    *,
    eps_null: torch.Tensor | None = None,
    guidance: float = 1.0,
    eps_pseudo: torch.Tensor | None = None,
    weights: tuple[float, float] = (1.0, 0.0),
) -> torch.Tensor:
    """DeepInv noise fusion and latent update: z + h·(λ1·ε̄ + λ2·ε*).

    ε̄ = eps, CFG-combined with eps_null when given; ε* = eps_pseudo (λ2 ignored without it);
    (λ1, λ2) = weights. With the defaults this is the inversion step z + h·ε̂.
    """
    lambda_fixed, lambda_pseudo = weights
    noise = lambda_fixed * guided(eps, eps_null, guidance)
    if eps_pseudo is not None:
        noise = noise + lambda_pseudo * eps_pseudo.float()
    return z.float() + per_sample(h, z) * noise


def easyinv_update(
    z: torch.Tensor, z_prev: torch.Tensor, v: torch.Tensor, h: Coefficient, eta: Coefficient
) -> tuple[torch.Tensor, torch.Tensor]:
    """EasyInv blend and update: z̃ = η·z + (1 − η)·z_prev, returns (z̃ + h·v, z̃); η = 1 is plain Euler."""
    eta = per_sample(eta, z)
    blended = eta * z.float() + (1 - eta) * z_prev.float()
    return blended + per_sample(h, z) * v.float(), blended


def renoise_update(
    z: torch.Tensor, v: torch.Tensor, h: Coefficient, average: torch.Tensor, weight: Coefficient
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReNoise iterate and running average: returns (z + h·v, average + w·(z + h·v)).

    Weights 1/m on the last m iterates (0 before them) leave their mean in `average`.
    """
    iterate = z.float() + per_sample(h, z) * v.float()
    return iterate, average.float() + per_sample(weight, z) * iterate
