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

SD3_SCHEDULER_DEFAULTS: dict[str, Any] = {"shift": 3.0, "use_dynamic_shifting": False}
FLUX_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def flow_sigmas(
    scheduler_config: Mapping[str, Any], steps: int, *, image_seq_len: int | None = None
) -> torch.Tensor:
    """N+1 sigmas for `steps` Euler steps, as the diffusers pipelines compute them.

    Static shift (SD3): `set_timesteps(steps)`. Dynamic shift (FLUX): σ = linspace(1, 1/N, N) shifted by
    μ = calculate_shift(image_seq_len, …) where image_seq_len is the number of packed latent tokens.
    """
    if steps < 1:
        raise FastinvError(f"steps must be at least 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    if scheduler.config.use_dynamic_shifting:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # imports transformers: only here

        if image_seq_len is None:
            raise ValueError("a dynamically shifted schedule needs image_seq_len")
        mu = calculate_shift(
            image_seq_len,
            scheduler.config.base_image_seq_len,
            scheduler.config.max_image_seq_len,
            scheduler.config.base_shift,
            scheduler.config.max_shift,
        )
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist(), mu=mu)
    else:
        scheduler.set_timesteps(steps)
    return scheduler.sigmas.to(torch.float64).cpu()
