"""Fixed-point solves of the implicit inversion step, to convergence: the exact targets a solver trains on.

One inversion step from z (at σ) to σ_next, h = σ_next − σ, is exact when its velocity f satisfies
f = g(f) := v(z + h·f, σ_next): Euler sampling from z + h·f then lands back on z. `solve_fixed_point`
finds f per sample with Anderson acceleration (type II, as in Walker & Ni 2011), which converges where the
plain iteration f ← g(f) crawls (h·‖∂v/∂z‖ near 1) or diverges (above 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastinv.methods.base import keep_best


@dataclass
class FixedPoint:
    """f: [B, ...] the solution g(f_best); residual: [B] ‖g(f_best) − f_best‖ / ‖g(f_best)‖ reached (RMS
    norms); evaluations: calls of g made."""

    f: torch.Tensor
    residual: torch.Tensor
    evaluations: int


def relative_residual(g_f: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """‖g(f) − f‖ / ‖g(f)‖ per sample, [B] float32."""
    return (g_f - f).flatten(1).norm(dim=1) / g_f.flatten(1).norm(dim=1).clamp(min=1e-30)


@torch.no_grad()
def solve_fixed_point(
    g: Callable[[torch.Tensor], torch.Tensor],
    f: torch.Tensor,
    *,
    tolerance: float = 1e-4,
    max_evaluations: int = 40,
    memory: int = 5,
) -> FixedPoint:
    """Solve f = g(f) from the start `f` [B, ...] until every sample's relative residual is below
    `tolerance` or g has been called `max_evaluations` times; returns g of the best iterate seen.

    Anderson step: with residuals r_j = g(f_j) − f_j of the last `memory` iterates, γ minimises
    ‖r_k − ΔR·γ‖ (ΔR: differences of successive residuals), and f_{k+1} = g(f_k) − ΔG·γ (ΔG: differences of
    successive g values). Least squares in float64 per sample; with one iterate it is the plain iteration.
    """
    batch = f.shape[0]
    g_f = g(f)
    evaluations = 1
    best_residual = torch.full((batch,), torch.inf, device=f.device)
    best_residual, (best_f, best_g) = keep_best(relative_residual(g_f, f), best_residual, (f, g_f), (f, g_f))
    residuals: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    while evaluations < max_evaluations and bool((best_residual >= tolerance).any()):
        residuals = [*residuals[-memory:], (g_f - f).flatten(1).double()]
        values = [*values[-memory:], g_f.flatten(1).double()]
        if len(residuals) == 1:
            f = g_f
        else:
            r = torch.stack(residuals, dim=2)  # [B, D, m]
            dr, dg = r.diff(dim=2), torch.stack(values, dim=2).diff(dim=2)
            gamma = torch.linalg.lstsq(dr, r[..., -1:]).solution  # [B, m − 1, 1]
            f = (values[-1] - (dg @ gamma)[..., 0]).view_as(f).to(f.dtype)
        g_f = g(f)
        evaluations += 1
        best_residual, (best_f, best_g) = keep_best(
            relative_residual(g_f, f), best_residual, (f, g_f), (best_f, best_g)
        )
    return FixedPoint(best_g, best_residual, evaluations)
