"""DeepInv (arXiv 2601.01487): a trained solver corrects each inversion step's noise in one forward pass."""

from __future__ import annotations

import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods.base import (
    InversionResult,
    InversionRun,
    StepCallback,
    in_window,
    sigma_batch,
    step_size,
    upward_steps,
)
from fastinv.models.base import VelocityModel
from fastinv.run_config import RunConfig
from fastinv.solver.model import SolverModel

REFERENCE_BLEND = {"blend": 0.1, "blend_window": (0.05, 0.4)}
"""The authors' code: z ← 0.9·z + 0.1·z_prev for inversion steps between 5 % and 40 % of T."""


@torch.no_grad()
def invert_deepinv(
    model: VelocityModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    keep_trajectory: bool = False,
    config: RunConfig | None = None,
    solver: SolverModel | None = None,
    blend: float = 0.0,
    blend_window: tuple[float, float] = (0.05, 0.4),
) -> InversionResult:
    """One denoiser call and one solver call per step; no per-step iterations. N NFE + N solver calls.

    Counting k = 0 … N−1 inversion steps from the clean end, with σ_cur < σ_next and h = σ_next − σ_cur:
        paper design (solver.warm_start False):  v = v_θ(z_k, σ_next);  ε̂_k = S(v, z_k, x0, c, σ_cur, σ_next);
        warm start (True):  v = v_θ(z_k + h·ε̂_{k−1}, σ_next);  ε̂_k = S(v, z_k, x0, ε̂_{k−1}, σ_cur, σ_next),
                            with ε̂_{−1} = 0 (the first step starts from Euler's guess at σ_next);
        z_{k+1} = z_k + h·ε̂_k,
    then, with blend b > 0 inside blend_window: z_{k+1} ← (1 − b)·z_{k+1} + b·z_k = z_k + (1 − b)·h·ε̂ (the
    reference's undocumented EasyInv-style 0.9/0.1 blend is REFERENCE_BLEND; off by default, measured in
    the README). The velocity is the CFG-combined one (one batched call of 2B); the solver is not doubled.
    `solver` is a SolverModel (Inverter supplies the model folder's trained solver).
    """
    if solver is None:
        raise FastinvError("deepinv needs a trained solver (fastinv train writes one): pass --solver DIR")
    if not 0.0 <= blend < 1.0:
        raise FastinvError(f"deepinv blend must be in [0, 1), got {blend}")
    run = InversionRun(model, x0, callback, keep_trajectory, config)
    n, x0 = len(sigmas) - 1, x0.float()
    warm = bool(solver.warm_start)

    def deepinv_step(
        z: torch.Tensor,
        eps: torch.Tensor,
        s: torch.Tensor,
        s_next: torch.Tensor,
        h: torch.Tensor,
        h_update: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        point = run.kernels.deepinv_update(z, eps, h) if warm else z  # z + h·ε̂_{k−1}: the warm start
        v = run.model(point, s_next, cond)
        eps = solver(v, z, x0, s, s_next, cond, eps)
        # the solver's corrected noise replaces v in the Euler step (h_update = (1 − b)·h in a blend)
        return run.kernels.deepinv_update(z, eps, h_update), eps

    step = run.captured(deepinv_step)
    z, eps = x0, torch.zeros_like(x0)
    for i, sigma, sigma_next in upward_steps(sigmas):
        h = step_size(sigma, sigma_next, z)
        s, s_next = sigma_batch(sigma, z), sigma_batch(sigma_next, z)
        blended = blend > 0 and in_window(i, n, tuple(blend_window))
        z, eps = step(z, eps, s, s_next, h, (1 - blend) * h if blended else h)
        run.step(i, sigma, sigma_next, z)
    return run.result(z, solver_calls=n)
