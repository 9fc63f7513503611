"""Sigma schedules from a model's own diffusers scheduler config (FlowMatchEulerDiscreteScheduler).

A schedule is a 1-D float64 tensor of N+1 sigmas in sampling order, σ_0 (≈1, noise) > … > σ_N = 0
(clean). Sampling walks it forwards, inversion backwards. Values are σ, never timesteps ×1000.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from fastinv.errors import FastinvError
from fastinv.request_checks import MAX_STEPS

SD3_SCHEDULER_DEFAULTS: dict[str, Any] = {"shift": 3.0, "use_dynamic_shifting": False}
FLUX_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


ROUNDING = 1e-6
"""How far above 1 a σ may be: diffusers computes schedules in float32, where σ_0 may round above 1 (kept
as computed, so that fastinv's schedules are the pipelines')."""


def flow_sigmas(
    scheduler_config: Mapping[str, Any],
    steps: int,
    *,
    image_seq_len: int | None = None,
    family: str = "sd3",
) -> torch.Tensor:
    """N+1 sigmas for `steps` Euler steps, exactly as the family's diffusers pipeline computes them.

    Static shift: `set_timesteps(steps)` (both families). Dynamic shift, with μ = calculate_shift(
    image_seq_len, …) from the scheduler config:
    - SD3 (StableDiffusion3Pipeline): `set_timesteps(steps, mu=μ)` on the scheduler's own timestep grid;
      image_seq_len = (latent h / patch)·(latent w / patch); max_shift defaults to 1.16 there;
    - FLUX (FluxPipeline): σ = linspace(1, 1/N, N) passed as `sigmas`, shifted by μ; image_seq_len = the
      packed 2×2 tokens; max_shift defaults to 1.15 (FLUX_SCHEDULER_DEFAULTS).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FastinvError(f"steps must be at least 1, got {steps!r}")
    if family not in ("sd3", "flux"):
        raise ValueError(f"family must be 'sd3' or 'flux', got {family!r}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    if scheduler.config.use_dynamic_shifting:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # imports transformers: only here

        if image_seq_len is None:
            raise ValueError("a dynamically shifted schedule needs image_seq_len")
        config = dict(scheduler_config)  # the pipelines read these with their own fallbacks
        mu = calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.16 if family == "sd3" else 1.15),
        )
        if family == "sd3":
            scheduler.set_timesteps(steps, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist(), mu=mu)
    else:
        scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.to(torch.float64).cpu()
    try:
        check_schedule(sigmas)
    except FastinvError as err:
        raise FastinvError(f"the scheduler config gives no schedule for {steps} steps: {err}") from None
    return sigmas


def check_schedule(sigmas: Any) -> None:
    """One-line error unless `sigmas` is a schedule to sample over: a 1-D float tensor of N+1 values in
    [0, 1] (up to ROUNDING above), strictly decreasing, 1 <= N <= MAX_STEPS."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or not sigmas.is_floating_point():
        raise FastinvError("sigmas must be a 1-D float tensor of N+1 values")
    if not 2 <= len(sigmas) <= MAX_STEPS + 1:
        raise FastinvError(f"sigmas must hold N+1 values, 1 <= N <= {MAX_STEPS}, got {len(sigmas)} values")
    if not bool(torch.isfinite(sigmas).all()) or sigmas.min() < 0 or sigmas.max() > 1 + ROUNDING:
        raise FastinvError("sigmas must be finite and in [0, 1]")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise FastinvError("sigmas must decrease strictly (sampling order, noise to clean)")
