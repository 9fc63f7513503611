"""Pseudo-labels ε* for solver training: invert with a frozen solver, regenerate with the interpolation
augmentation, and record the per-step noise the regenerated trajectory implies."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.methods.base import sigma_batch
from fastinv.methods.deepinv import invert_deepinv
from fastinv.models.base import VelocityModel
from fastinv.solver.model import SolverModel


@torch.no_grad()
def pseudo_labels(
    model: VelocityModel,
    solver: SolverModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    alpha: float = 0.5,
    blend: float = 0.0,
    blend_window: tuple[float, float] = (0.05, 0.4),
) -> torch.Tensor:
    """ε* [B, T, C, H, W] for x0 [B, C, H, W] over the T-step schedule `sigmas`; index k = inversion step k.

    The solver inverts x0 → z_T, keeping the trajectory z_k (at σ_{T−k}). Sampling then goes back down:
    y_T = z_T; at sampling step j (σ_j → σ_{j+1}, inversion step k = T−1−j)
    y' = y + (σ_{j+1} − σ_j)·v(y, σ_j), and during the first half of the regeneration (j < T // 2)
    y' ← α·y' + (1 − α)·z_k (the linear interpolation augmentation).
    The label is the noise that carries y' up to y: ε*_k = (y − y')/(σ_j − σ_{j+1}).
    Without the blend it is exactly v(y, σ_j), a consistent fixed point of the inversion step.
    """
    inverted = invert_deepinv(
        model, x0, sigmas, cond, solver=solver, keep_trajectory=True, blend=blend, blend_window=blend_window
    )
    trajectory = inverted.trajectory
    steps = len(sigmas) - 1
    labels = torch.empty(x0.shape[0], steps, *x0.shape[1:], device=x0.device)
    y = inverted.z_T
    for j in range(steps):
        k = steps - 1 - j
        h = float(sigmas[j] - sigmas[j + 1])
        lower = y - h * model(y, sigma_batch(sigmas[j], y), cond)
        if j < steps // 2:
            lower = alpha * lower + (1 - alpha) * trajectory[k]
        labels[:, k] = (y - lower) / h
        y = lower
    return labels
